package status

import "github.com/fleetprov/prov/proxy/auditlog"

// Action is what the console tells the person at the station about an
// attempt that did not enroll: what happened, in plain words, and what to
// do. docs/factory.md carries the same table (a test checks it).
type Action struct {
	Rule, What, Do string
}

// Actions are the refusal rules (auditlog.Record.Rule) and failures, each
// with its action, in the order the docs list them.
var Actions = []Action{
	{"network", "This station is not on the factory network.", "Connect the board to the factory network; if it is, ask the shift lead to check the proxy's networks."},
	{"rate", "Too many attempts from this station just now.", "Wait a few seconds and try again; a board that keeps retrying on its own is stuck: power it off."},
	{"manifest", "This board is in no batch manifest.", "Set the board aside for the shift lead: it does not belong to the production order."},
	{"window", "Its batch is not open now.", "Ask the shift lead: the batch has not started or is over."},
	{"quota", "Its batch has enrolled every board it planned.", "Stop and tell the shift lead: the batch is complete, this board is one too many."},
	{"reenrollment", "This board was enrolled before, with another key (its card was reflashed or swapped).", "Put back the card it came with, or ask a security admin to allow its re-enrollment."},
	{"attestation", "The board's TPM did not prove its key, or its batch requires a TPM key and it sent none.", "Set the board aside for the shift lead with the reason shown: an untrusted TPM or another TPM than the manifest lists is a wrong or swapped board; an expired or used challenge: retry once."},
	{auditlog.RuleBadRequest, "The board sent something malformed (its hardware ID or its key request).", "Flash its card again with the factory image and retry; if it happens again, set the board aside."},
	{auditlog.Failed, "Core or step-ca did not answer in time.", "Try again in a minute; if it goes on, tell the shift lead (the console's health panel says which)."},
}

// ActionFor is the action for a record that did not enroll; nil for one
// that did.
func ActionFor(r auditlog.Record) *Action {
	key := r.Rule
	switch {
	case r.Result == auditlog.Enrolled:
		return nil
	case r.Result == auditlog.Failed:
		key = auditlog.Failed
	case key == "":
		key = auditlog.RuleBadRequest // a refusal recorded before rules were
	}
	for i := range Actions {
		if Actions[i].Rule == key {
			return &Actions[i]
		}
	}
	return &Action{Rule: key, What: "Refused: " + r.Reason, Do: "Set the board aside for the shift lead."}
}
