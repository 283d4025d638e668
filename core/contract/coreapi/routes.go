package coreapi

import (
	"net/http"
	"net/url"
	"slices"
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
	// Versioned routes have a version: a GET answers with its ETag and
	// honours If-None-Match (304), a change requires If-Match (428
	// without, 412 when it does not match). RFC 9110 §13.
	Versioned bool
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

// Whether a route has a version (Route.Versioned).
const (
	versioned   = true
	unversioned = false
)

// The routes. A device reaches only its own record and bundle: any other
// serial is 404, the same as one that does not exist.
var (
	RouteRegister      = Route{"register", http.MethodPost, "/v1/devices", proxy, unversioned}
	RouteRecordIssued  = Route{"record_issued", http.MethodPost, "/v1/devices/{serial}/certificates", proxy, unversioned}
	RouteListDevices   = Route{"list", http.MethodGet, "/v1/devices", admin, unversioned}
	RouteDevice        = Route{"device", http.MethodGet, "/v1/devices/{serial}", []pki.Role{pki.RoleAdmin, pki.RoleDevice}, versioned}
	RouteBundle        = Route{"bundle", http.MethodGet, "/v1/devices/{serial}/bundle", []pki.Role{pki.RoleDevice, pki.RoleProxy}, versioned}
	RouteSetDeviceData = Route{"set_device_data", http.MethodPatch, "/v1/devices/{serial}/data", admin, versioned}
	RouteReprovision   = Route{"reprovision", http.MethodPost, "/v1/devices/{serial}/reprovision", admin, unversioned}
	RouteRevoke        = Route{"revoke", http.MethodPost, "/v1/devices/{serial}/revoke", admin, unversioned}
	RouteDeviceAudit   = Route{"device_audit", http.MethodGet, "/v1/devices/{serial}/audit", admin, unversioned}
	RouteGroup         = Route{"group", http.MethodGet, "/v1/groups/{group}", admin, versioned}
	RouteSetGroupData  = Route{"set_group_data", http.MethodPatch, "/v1/groups/{group}/data", admin, versioned}
	RouteGroupAudit    = Route{"group_audit", http.MethodGet, "/v1/groups/{group}/audit", admin, unversioned}
	RouteBackup        = Route{"backup", http.MethodGet, "/v1/backup", admin, unversioned}
	RouteHealthz       = Route{"healthz", http.MethodGet, "/healthz", anyone, unversioned}
	RouteReadyz        = Route{"readyz", http.MethodGet, "/readyz", anyone, unversioned}
	RouteMetrics       = Route{"metrics", http.MethodGet, "/metrics", anyone, unversioned}
)

// A board's admission for enrollment and its end (admission.go).
var (
	RouteAdmit        = Route{"admit", http.MethodPost, "/v1/admissions", proxy, unversioned}
	RouteEndAdmission = Route{"end_admission", http.MethodPost, "/v1/admissions/{serial}/outcome", proxy, unversioned}
)

// A device's report of what it runs (report.go).
var RouteReport = Route{"report", http.MethodPost, "/v1/devices/{serial}/report", []pki.Role{pki.RoleDevice}, unversioned}

// Routes is every route of core's API.
var Routes = []Route{
	RouteRegister, RouteRecordIssued, RouteListDevices, RouteDevice, RouteBundle, RouteSetDeviceData, RouteReprovision,
	RouteRevoke, RouteDeviceAudit, RouteGroup, RouteSetGroupData, RouteGroupAudit, RouteBackup, RouteHealthz, RouteReadyz,
	RouteMetrics, RouteAdmit, RouteEndAdmission, RouteReport, RouteStartRollout, RouteGroupRollouts, RouteFleet, RouteRollout,
	RoutePauseRollout, RouteResumeRollout, RouteForceRollout, RouteAbortRollout,
	RouteAuditPrune,
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

// Methods are the methods a path of routes answers (Route.Path, a
// pattern), sorted, with HEAD wherever GET is served: what a 405's Allow
// header lists (RFC 9110 §10.2.1).
func Methods(routes []Route, path string) []string {
	var m []string
	for _, r := range routes {
		if r.Path == path && !slices.Contains(m, r.Method) {
			m = append(m, r.Method)
			if r.Method == http.MethodGet && !slices.Contains(m, http.MethodHead) {
				m = append(m, http.MethodHead)
			}
		}
	}
	slices.Sort(m)
	return m
}

// Public says whether the route needs no certificate.
func (r Route) Public() bool { return len(r.Roles) == 0 }
