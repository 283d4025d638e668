package deployment

import (
	"cmp"
	"crypto/x509"
	"net"
	"slices"
)

// hostConstraints are the server names the intermediate may certify,
// besides the trust domain's URIs: the host names and addresses given to
// init (CA, core, proxies) and any added later by Widen.
//
// RFC 5280 (4.2.1.10) makes a DNS constraint cover the name and every name
// below it (core.example.com also permits x.core.example.com), and a name
// type with no permitted subtree unconstrained: so a deployment given no
// IP address at all (or no DNS name) excludes every one, or a misused CA
// could still certify any address.
type hostConstraints struct {
	dns []string     // sorted, unique
	ips []*net.IPNet // single addresses, sorted by their text, unique
	// anyDNS, anyIP: the type is not constrained at all, so every host of
	// it is permitted (an intermediate made before init constrained hosts).
	anyDNS, anyIP bool
}

// constraintsFor collects the hosts of each list; validateHost has
// checked them.
func constraintsFor(hostLists ...[]string) hostConstraints {
	var c hostConstraints
	for _, hosts := range hostLists {
		c.add(hosts...)
	}
	return c
}

// constraintsOf reads the permitted hosts of an intermediate this package
// made.
func constraintsOf(inter *x509.Certificate) hostConstraints {
	c := hostConstraints{
		dns:    slices.Clone(inter.PermittedDNSDomains),
		anyDNS: len(inter.PermittedDNSDomains) == 0 && len(inter.ExcludedDNSDomains) == 0,
		anyIP:  len(inter.PermittedIPRanges) == 0 && len(inter.ExcludedIPRanges) == 0,
	}
	for _, n := range inter.PermittedIPRanges {
		c.ips = append(c.ips, &net.IPNet{IP: n.IP, Mask: n.Mask})
	}
	c.normalise()
	return c
}

// add adds hosts, each an IP address or a DNS name, and reports which were
// new: not already permitted by name or by the type being unconstrained.
func (c *hostConstraints) add(hosts ...string) (added []string) {
	have := c.hosts()
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			n := singleAddress(ip)
			if c.anyIP || slices.Contains(have, n.String()) {
				continue
			}
			c.ips = append(c.ips, n)
			have = append(have, n.String())
			added = append(added, ip.String())
			continue
		}
		if c.anyDNS || slices.Contains(have, h) {
			continue
		}
		c.dns = append(c.dns, h)
		have = append(have, h)
		added = append(added, h)
	}
	c.normalise()
	return added
}

// hosts are the permitted DNS names and address ranges, as text.
func (c hostConstraints) hosts() []string {
	out := slices.Clone(c.dns)
	if c.anyDNS {
		out = append(out, anyDNSName)
	}
	for _, n := range c.ips {
		out = append(out, n.String())
	}
	if c.anyIP {
		out = append(out, anyIPAddress)
	}
	return out
}

// How hosts shows an unconstrained type.
const (
	anyDNSName   = "any DNS name"
	anyIPAddress = "any IP address"
)

func (c *hostConstraints) normalise() {
	slices.Sort(c.dns)
	c.dns = slices.Compact(c.dns)
	slices.SortFunc(c.ips, func(a, b *net.IPNet) int { return cmp.Compare(a.String(), b.String()) })
	c.ips = slices.CompactFunc(c.ips, func(a, b *net.IPNet) bool { return a.String() == b.String() })
}

// apply writes the constraints into an intermediate's template: critical,
// as RFC 5280 requires of name constraints, so a verifier that does not
// understand them refuses the chain instead of ignoring them.
func (c hostConstraints) apply(tmpl *x509.Certificate, trustDomain string) {
	tmpl.PermittedDNSDomainsCritical = true // marks the whole extension critical
	tmpl.PermittedURIDomains = []string{trustDomain}
	tmpl.PermittedDNSDomains = slices.Clone(c.dns)
	tmpl.PermittedIPRanges = slices.Clone(c.ips)
	tmpl.ExcludedDNSDomains, tmpl.ExcludedIPRanges = nil, nil
	if len(c.dns) == 0 && !c.anyDNS {
		tmpl.ExcludedDNSDomains = []string{""} // the empty constraint matches every name
	}
	if len(c.ips) == 0 && !c.anyIP {
		tmpl.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 8*net.IPv4len)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 8*net.IPv6len)},
		}
	}
}

// singleAddress is the range holding only ip, in its 4-byte form for IPv4.
func singleAddress(ip net.IP) *net.IPNet {
	if v4 := ip.To4(); v4 != nil {
		return &net.IPNet{IP: v4, Mask: net.CIDRMask(8*net.IPv4len, 8*net.IPv4len)}
	}
	return &net.IPNet{IP: ip.To16(), Mask: net.CIDRMask(8*net.IPv6len, 8*net.IPv6len)}
}
