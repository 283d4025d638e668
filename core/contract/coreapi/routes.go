package coreapi

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/fleetprov/prov/pki"
)

// Route is one route of core's API: the server registers it, the client
// calls it, and the documentation test checks docs/api.md lists it with
// the same roles.
type Route struct {
	// Name labels the route in metrics and logs.
	Name   string
	Method string
	// Path is the pattern, with {serial} and {group} for path variables.
	Path string
	// Roles whose certificates may use the route; none means no
	// certificate is needed (health and metrics).
	Roles []pki.Role
}

// Path variables.
const (
	VarSerial = "serial"
	VarGroup  = "group"
)

var (
	admin  = []pki.Role{pki.RoleAdmin}
	proxy  = []pki.Role{pki.RoleProxy}
	anyone []pki.Role
)

// The routes. A device reaches only its own record and bundle: any other
// serial is 404, the same as one that does not exist.
var (
	RouteRegister      = Route{"register", http.MethodPost, "/v1/devices", proxy}
	RouteRecordIssued  = Route{"record_issued", http.MethodPost, "/v1/devices/{serial}/certificates", proxy}
	RouteListDevices   = Route{"list", http.MethodGet, "/v1/devices", admin}
	RouteDevice        = Route{"device", http.MethodGet, "/v1/devices/{serial}", []pki.Role{pki.RoleAdmin, pki.RoleDevice}}
	RouteBundle        = Route{"bundle", http.MethodGet, "/v1/devices/{serial}/bundle", []pki.Role{pki.RoleDevice, pki.RoleProxy}}
	RouteSetDeviceData = Route{"set_device_data", http.MethodPatch, "/v1/devices/{serial}/data", admin}
	RouteReprovision   = Route{"reprovision", http.MethodPost, "/v1/devices/{serial}/reprovision", admin}
	RouteRevoke        = Route{"revoke", http.MethodPost, "/v1/devices/{serial}/revoke", admin}
	RouteDeviceAudit   = Route{"device_audit", http.MethodGet, "/v1/devices/{serial}/audit", admin}
	RouteGroup         = Route{"group", http.MethodGet, "/v1/groups/{group}", admin}
	RouteSetGroupData  = Route{"set_group_data", http.MethodPatch, "/v1/groups/{group}/data", admin}
	RouteGroupAudit    = Route{"group_audit", http.MethodGet, "/v1/groups/{group}/audit", admin}
	RouteBackup        = Route{"backup", http.MethodGet, "/v1/backup", admin}
	RouteHealthz       = Route{"healthz", http.MethodGet, "/healthz", anyone}
	RouteReadyz        = Route{"readyz", http.MethodGet, "/readyz", anyone}
	RouteMetrics       = Route{"metrics", http.MethodGet, "/metrics", anyone}
)

// Routes is every route of core's API.
var Routes = []Route{
	RouteRegister, RouteRecordIssued, RouteListDevices, RouteDevice, RouteBundle, RouteSetDeviceData, RouteReprovision,
	RouteRevoke, RouteDeviceAudit, RouteGroup, RouteSetGroupData, RouteGroupAudit, RouteBackup, RouteHealthz, RouteReadyz,
	RouteMetrics,
}

// URL is the route's path with its variables filled in order, each
// escaped as one path segment.
func (r Route) URL(vars ...string) string {
	var b strings.Builder
	rest := r.Path
	for _, v := range vars {
		i := strings.IndexByte(rest, '{')
		j := strings.IndexByte(rest, '}')
		if i < 0 || j < i {
			panic("coreapi: route " + r.Name + " has fewer variables than given")
		}
		b.WriteString(rest[:i])
		b.WriteString(url.PathEscape(v))
		rest = rest[j+1:]
	}
	if strings.IndexByte(rest, '{') >= 0 {
		panic("coreapi: route " + r.Name + " needs more variables")
	}
	b.WriteString(rest)
	return b.String()
}

// Allows says whether a certificate of role may use the route.
func (r Route) Allows(role pki.Role) bool {
	for _, x := range r.Roles {
		if x == role {
			return true
		}
	}
	return false
}

// Public says whether the route needs no certificate.
func (r Route) Public() bool { return len(r.Roles) == 0 }
