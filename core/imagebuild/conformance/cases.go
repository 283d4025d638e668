package conformance

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/imagebuild/squashfs/tamper"
	"github.com/fleetprov/prov/pki/signedimage"
)

// spec is one case as written here: its bundle, the step that refuses it
// (0: accepted) and any input that differs from the defaults (serial
// 1a2b3c4d5e, high-water mark 3, the suite's clock, a floor 20 days
// before it, fetched).
type spec struct {
	name   string
	bundle []byte
	step   signedimage.Step
	check  string // the inspection's check, for step 25
	about  string
	opts   func(*Case)
}

const finding = "issue 14: "

func at(t time.Time) string { return t.Format(time.RFC3339) }

func withClock(clock time.Time, floor *time.Time) func(*Case) {
	return func(c *Case) {
		c.Clock = at(clock)
		c.Floor = nil
		if floor != nil {
			f := at(*floor)
			c.Floor = &f
		}
	}
}

func ptr(t time.Time) *time.Time { return &t }

// cases lists the suite. To add one, add a line: a name, a bundle (g.good,
// g.signed(image) for an honestly signed image of your own, g.honest(payload)
// for a statement of your own, g.forge for anything), the step that must
// refuse it and what it shows.
func cases(g *gen) []spec {
	img := g.image
	other := g.imageOf(recordOf(otherSerial, generation, issued), "")
	// An image whose image.json says generation 0, as the statement does.
	gen0 := g.imageOf(record(generation, issued), `{"format":1,"serial":"1a2b3c4d5e","generation":0,"issuedAt":"`+at(issued)+`"}`+"\n")
	jws, _ := statementOf(g.good)
	parts := strings.Split(jws, ".")
	x5c := g.header("signer", "intermediate")
	x5cList := x5c[strings.Index(x5c, "[") : strings.LastIndex(x5c, "]")+1]
	sig := parts[2]
	// Another spelling of the same signature: the last character's unused
	// bits set (64 bytes are 86 characters; the last holds 2 bits).
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, sig[len(sig)-1])
	respelt := sig[:len(sig)-1] + string(alphabet[last|1])
	if respelt == sig {
		respelt = sig[:len(sig)-1] + string(alphabet[last|2])
	}
	flipped := []byte(sig)
	flipped[10] = alphabet[(strings.IndexByte(alphabet, flipped[10])+1)%64]
	kept := func(clock time.Time) func(*Case) {
		return func(c *Case) { withClock(clock, nil)(c); c.Kept = true }
	}
	serialOf := func(s string) func(*Case) { return func(c *Case) { c.Serial = s } }
	highWater := func(n uint64) func(*Case) { return func(c *Case) { c.HighWater = n } }

	return slices.Concat([]spec{
		// Accepted.
		{name: "valid: the bundle core makes", bundle: g.good, about: "generation 3 at high-water mark 3: the same generation again is accepted"},
		{name: "valid: generation above the high-water mark", bundle: g.good, opts: highWater(1), about: "a newer generation"},
		{name: "valid: members in another order, white space between tokens", bundle: g.forge("signer",
			`{ "x5c" : `+x5cList+`, "typ" : "prov-image+jws", "alg" : "EdDSA" }`,
			"{\n  \"issuedAt\": \""+at(issued)+"\",\n  \"length\": "+itoa(len(img))+",\n  \"sha256\": \""+sha(img)+"\",\n  \"generation\": 3,\n  \"serial\": \"1a2b3c4d5e\",\n  \"format\": 1\n}", img),
			about: "member order and insignificant white space are not part of the rules"},
		{name: "valid: two intermediates in issuing order", bundle: g.withSigner("signer-deep", "sub-intermediate-allowed", "intermediate-unlimited"), about: "x5c of three certificates; path lengths allow it"},
		{name: "valid: an intermediate with anyExtendedKeyUsage", bundle: g.withSigner("signer-under-any-usage", "intermediate-any-usage"), about: "the one extended key usage a CA may have"},
		{name: "valid: clock in 1970, floor before the signer's certificate", bundle: g.good, opts: withClock(time.Unix(0, 0).UTC(), ptr(date(2026, 5, 1))),
			about: "a board without a clock: the chain proves the time is at least its NotBefore"},
		{name: "valid: issuedAt later than the clock, within the signer's validity", bundle: g.good, opts: withClock(date(2026, 6, 5), ptr(date(2026, 5, 16))),
			about: "no skew limit against the clock: only the signer's validity bounds issuedAt"},
		{name: "valid: kept bundle whose signer has expired since", bundle: g.good, opts: kept(date(2027, 1, 1)), about: "a kept bundle is checked at its issue time"},
		{name: "valid: statement dated when a renewed signer's chain began", bundle: g.renewedSignerBundle(), opts: withClock(date(2026, 8, 15), ptr(date(2026, 7, 26))),
			about: "a generation made before the signer's certificate is dated at its NotBefore, in the statement and in image.json alike"},

		// Steps 1-4: the bundle's frame.
		{name: "empty bundle", bundle: []byte{}, step: signedimage.StepPrefix, about: "fuzz seed: nothing at all"},
		{name: "11 bytes", bundle: g.good[:11], step: signedimage.StepPrefix, about: "magic and a partial size"},
		{name: "wrong magic", bundle: append([]byte("PROVBNDX"), g.good[8:]...), step: signedimage.StepMagic, about: "the first tamper class of the bit-flip test"},
		{name: "statement size 0", bundle: withSize(g.good, 0), step: signedimage.StepStatementSize, about: "size below 1"},
		{name: "statement size 65537", bundle: withSize(g.good, 65537), step: signedimage.StepStatementSize, about: "size above 65536"},
		{name: "statement cut short", bundle: g.good[:100], step: signedimage.StepStatement, about: "fewer than n bytes of statement"},

		// Step 5: compact serialization.
		{name: "four parts", bundle: respell(g.good, func(s string) string { return s + ".AA" }), step: signedimage.StepCompact, about: "a compact JWS has three parts"},
		{name: "signature padded", bundle: respell(g.good, func(s string) string { return s + "==" }), step: signedimage.StepCompact, about: "base64url without padding"},
		{name: "signature with non-zero unused bits", bundle: respell(g.good, func(s string) string { return strings.TrimSuffix(s, sig) + respelt }), step: signedimage.StepCompact,
			about: "the same bytes spelt another way (the non-canonical tamper class)"},
		{name: "line break in the statement", bundle: respell(g.good, func(s string) string { return parts[0] + "\n." + parts[1] + "." + parts[2] }), step: signedimage.StepCompact, about: "nothing but the alphabet"},

		// Steps 6-9: the protected header.
		{name: "header: alg twice, none then EdDSA", bundle: g.forge("signer", `{"alg":"none","alg":"EdDSA","typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img),
			step: signedimage.StepHeaderJSON, about: finding + "duplicate members were read, the last one winning"},
		{name: "header: not an object", bundle: g.forge("signer", `["EdDSA"]`, payload(img), img), step: signedimage.StepHeaderJSON, about: "the header is a JSON object"},
		{name: "header: an escape in a value", bundle: g.forge("signer", `{"alg":"EdDS\u0041","typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img),
			step: signedimage.StepHeaderJSON, about: "no backslash: one spelling of every value"},
		{name: "header: data after the object", bundle: g.forge("signer", x5c+" {}", payload(img), img), step: signedimage.StepHeaderJSON, about: "one JSON text"},
		{name: "header: ALG in upper case", bundle: g.forge("signer", `{"ALG":"EdDSA","typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img),
			step: signedimage.StepHeaderMembers, about: finding + "member names were matched without regard to case"},
		{name: "header: X5C in upper case", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","X5C":`+x5cList+`}`, payload(img), img),
			step: signedimage.StepHeaderMembers, about: finding + "member names were matched without regard to case"},
		{name: "header: kid", bundle: g.forge("signer", `{"alg":"EdDSA","kid":"x","typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "no other members"},
		{name: "header: crit", bundle: g.forge("signer", `{"alg":"EdDSA","crit":["exp"],"typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "no other members"},
		{name: "header: typ missing", bundle: g.forge("signer", `{"alg":"EdDSA","x5c":`+x5cList+`}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "every member required"},
		{name: "header: alg null", bundle: g.forge("signer", `{"alg":null,"typ":"prov-image+jws","x5c":`+x5cList+`}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "no null"},
		{name: "header: x5c a string", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","x5c":"MIIB"}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "x5c is an array"},
		{name: "header: x5c holds a number", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","x5c":[1]}`, payload(img), img), step: signedimage.StepHeaderMembers, about: "of strings"},
		{name: "header: alg none", bundle: g.forge("signer", strings.Replace(x5c, `"EdDSA"`, `"none"`, 1), payload(img), img), step: signedimage.StepAlgorithm, about: "no algorithm negotiation"},
		{name: "header: alg ES256", bundle: g.forge("signer", strings.Replace(x5c, `"EdDSA"`, `"ES256"`, 1), payload(img), img), step: signedimage.StepAlgorithm, about: "no algorithm negotiation"},
		{name: "header: alg eddsa in lower case", bundle: g.forge("signer", strings.Replace(x5c, `"EdDSA"`, `"eddsa"`, 1), payload(img), img), step: signedimage.StepAlgorithm, about: "values are compared exactly"},
		{name: "header: typ JWT", bundle: g.forge("signer", strings.Replace(x5c, `"prov-image+jws"`, `"JWT"`, 1), payload(img), img), step: signedimage.StepAlgorithm, about: "a statement signed for something else"},
		{name: "header: x5c empty", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","x5c":[]}`, payload(img), img), step: signedimage.StepCertificates, about: "1 to 4 certificates"},
		{name: "header: x5c of five certificates", bundle: g.forge("signer", g.header("signer", "intermediate", "intermediate-open", "intermediate-any-usage", "intermediate-unlimited"), payload(img), img),
			step: signedimage.StepCertificates, about: "1 to 4 certificates"},
		{name: "header: x5c entry not base64", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","x5c":["!!!!"]}`, payload(img), img), step: signedimage.StepCertificates, about: "standard base64 of DER"},
		{name: "header: x5c entry not a certificate", bundle: g.forge("signer", `{"alg":"EdDSA","typ":"prov-image+jws","x5c":["aGVsbG8="]}`, payload(img), img), step: signedimage.StepCertificates, about: "standard base64 of DER"},

		// Steps 10-13: the signer's chain.
		{name: "x5c with the root included", bundle: g.withSigner("signer", "intermediate", "root"), step: signedimage.StepIssuingOrder, about: finding + "x5c was read as a pool; the root is never sent"},
		{name: "x5c with the intermediate twice", bundle: g.withSigner("signer", "intermediate", "intermediate"), step: signedimage.StepIssuingOrder, about: finding + "no certificate twice"},
		{name: "x5c intermediate first", bundle: g.forge("signer", g.header("intermediate", "signer"), payload(img), img), step: signedimage.StepIssuingOrder, about: finding + "leaf first, then each issuer"},
		{name: "x5c without the intermediate", bundle: g.withSigner("signer"), step: signedimage.StepIssuingOrder, about: "the last certificate must be issued by the pinned root"},
		{name: "signer of another PKI, same names", bundle: g.withSigner("signer-other-pki", "other-intermediate"), step: signedimage.StepIssuingOrder, about: "tamper class: another deployment's signer"},
		{name: "intermediate not a CA", bundle: g.withSigner("signer-under-not-ca", "intermediate-not-ca"), step: signedimage.StepPathRules, about: "CA bit"},
		{name: "intermediate with the codeSigning extended key usage", bundle: g.withSigner("signer-under-codesigning", "intermediate-codesigning"), step: signedimage.StepPathRules,
			about: "a CA has no extended key usage or anyExtendedKeyUsage (crypto/x509 alone accepts this)"},
		{name: "path longer than the intermediate allows", bundle: g.withSigner("signer-too-deep", "sub-intermediate", "intermediate"), step: signedimage.StepPathRules, about: "path length"},
		{name: "signer outside the intermediate's name constraints", bundle: g.withSigner("signer-outside-constraints", "intermediate-other-domain"), step: signedimage.StepPathRules, about: "name constraints"},
		{name: "signer with an unknown critical extension", bundle: g.withSigner("signer-critical-extension", "intermediate"), step: signedimage.StepPathRules, about: "critical extensions"},
		{name: "signer with two CNs", bundle: g.withSigner("signer-two-cns", "intermediate"), step: signedimage.StepSignerRules, about: finding + "only the last CN was checked"},
		{name: "signer URI with the scheme SPIFFE in upper case", bundle: g.withSigner("signer-upper-case-scheme", "intermediate"), step: signedimage.StepSignerRules, about: finding + "the scheme's case was not checked"},
		{name: "core certificate as signer", bundle: g.withSigner("signer-core-identity", "intermediate"), step: signedimage.StepSignerRules, about: "tamper class: another role"},
		{name: "signer for clientAuth only", bundle: g.withSigner("signer-client-auth", "intermediate"), step: signedimage.StepSignerRules, about: "tamper class: no codeSigning"},
		{name: "signer without extended key usage", bundle: g.withSigner("signer-no-eku", "intermediate"), step: signedimage.StepSignerRules, about: "codeSigning must be named"},
		{name: "signer with keyEncipherment only", bundle: g.withSigner("signer-key-encipherment", "intermediate"), step: signedimage.StepSignerRules, about: "digitalSignature if a key usage is present"},
		{name: "signer with an ECDSA key", bundle: g.withSigner("signer-ecdsa", "intermediate"), step: signedimage.StepSignerRules, about: "Ed25519 only"},
		{name: "signer CN that disagrees with its URI", bundle: g.withSigner("signer-cn-disagrees", "intermediate"), step: signedimage.StepSignerRules, about: "CN signer/<name>"},
		{name: "signer with a DNS name", bundle: g.withSigner("signer-dns-name", "intermediate"), step: signedimage.StepSignerRules, about: "the identity is its only name"},
		{name: "signer with two URIs", bundle: g.withSigner("signer-two-uris", "intermediate"), step: signedimage.StepSignerRules, about: "exactly one URI SAN"},
		{name: "signer that is a CA", bundle: g.withSigner("signer-ca", "intermediate"), step: signedimage.StepSignerRules, about: "CA bit on the leaf"},
		{name: "signer of another trust domain", bundle: g.withSigner("signer-foreign-domain", "intermediate-open"), step: signedimage.StepSignerRules, about: "the root's trust domain"},
		{name: "signer expired at the clock", bundle: g.withSigner("signer-expired", "intermediate"), step: signedimage.StepValidity, about: "tamper class: an expired signer"},
		{name: "clock in 1970 without a floor", bundle: g.good, opts: withClock(time.Unix(0, 0).UTC(), nil), step: signedimage.StepValidity, about: "without a floor the clock is believed"},
		{name: "floor after the signer expired", bundle: g.good, opts: withClock(time.Unix(0, 0).UTC(), ptr(date(2026, 9, 15))), step: signedimage.StepValidity, about: "a floor never accepts what expired before it"},

		// Step 14: the signature.
		{name: "signature by another key", bundle: g.forge("signer-expired", x5c, payload(img), img), step: signedimage.StepSignature, about: "tamper class: a signature for another key"},
		{name: "signature changed", bundle: respell(g.good, func(s string) string { return strings.TrimSuffix(s, sig) + string(flipped) }), step: signedimage.StepSignature, about: "tamper class: a flipped signature"},
		{name: "statement changed after signing", bundle: respell(g.good, func(string) string {
			return parts[0] + "." + b64(payload(img, `"generation":3`, `"generation":4`)) + "." + sig
		}), step: signedimage.StepSignature, about: "tamper class: a newer generation claimed"},

		// Steps 15-17: the statement.
		{name: "statement: serial twice, the last another device's", bundle: g.forge("signer", x5c,
			strings.TrimSuffix(payload(other), "}")+`,"serial":"`+otherSerial+`"}`, other),
			step: signedimage.StepPayloadJSON, opts: serialOf(otherSerial), about: finding + "the last of duplicate members won"},
		{name: "statement: not JSON", bundle: g.honest(`{"format":1,`), step: signedimage.StepPayloadJSON, about: "JSON"},
		{name: "statement: NaN", bundle: g.honest(payload(img, `"generation":3`, `"generation":NaN`)), step: signedimage.StepPayloadJSON, about: "JSON has no NaN"},
		{name: "statement: an escape in the serial", bundle: g.honest(payload(img, `"serial":"1`, `"serial":"\u0031`)), step: signedimage.StepPayloadJSON, about: "no backslash"},
		{name: "statement: duplicate members in a nested object", bundle: g.honest(payload(img, `"format":1,`, `"format":1,"x":{"a":1,"a":2},`)), step: signedimage.StepPayloadJSON, about: "no duplicates at any depth"},
		{name: "statement: an array", bundle: g.honest(`[` + payload(img) + `]`), step: signedimage.StepPayloadJSON, about: "an object"},
		{name: "statement: format 2", bundle: g.honest(payload(img, `"format":1`, `"format":2`)), step: signedimage.StepFormat, about: "tamper class: a future format"},
		{name: "statement: format missing", bundle: g.honest(payload(img, `"format":1,`, ``)), step: signedimage.StepFormat, about: "format is required"},
		{name: "statement: format a string", bundle: g.honest(payload(img, `"format":1`, `"format":"1"`)), step: signedimage.StepFormat, about: "format is the integer 1"},
		{name: "statement: format 1.0", bundle: g.honest(payload(img, `"format":1`, `"format":1.0`)), step: signedimage.StepFormat, about: "integers are spelt as digits"},
		{name: "statement: SERIAL beside serial", bundle: g.forge("signer", x5c, strings.TrimSuffix(payload(other), "}")+`,"SERIAL":"`+otherSerial+`"}`, other),
			step: signedimage.StepPayloadMembers, opts: serialOf(otherSerial), about: finding + "names in another case were read as the member"},
		{name: "statement: Generation in another case", bundle: g.honest(payload(img, `"generation"`, `"Generation"`)), step: signedimage.StepPayloadMembers, about: finding + "names in another case were read as the member"},
		{name: "statement: issuedAt missing", bundle: g.honest(payload(img, `,"issuedAt":"`+at(issued)+`"`, ``)), step: signedimage.StepPayloadMembers, about: finding + "read as year 1"},
		{name: "statement: issuedAt null", bundle: g.honest(payload(img, `"`+at(issued)+`"`, `null`)), step: signedimage.StepPayloadMembers, about: finding + "read as year 1"},
		{name: "statement: issuedAt with fractional seconds", bundle: g.honest(payload(img, at(issued), "2026-07-01T00:00:00.5Z")), step: signedimage.StepPayloadMembers, about: finding + "whole seconds"},
		{name: "statement: issuedAt with an offset", bundle: g.honest(payload(img, at(issued), "2026-07-01T02:00:00+02:00")), step: signedimage.StepPayloadMembers, about: finding + "UTC with Z"},
		{name: "statement: issuedAt with lower-case t and z", bundle: g.honest(payload(img, at(issued), "2026-07-01t00:00:00z")), step: signedimage.StepPayloadMembers, about: "one spelling: upper-case T and Z"},
		{name: "statement: issuedAt at a leap second", bundle: g.honest(payload(img, at(issued), "2026-06-30T23:59:60Z")), step: signedimage.StepPayloadMembers, about: "seconds 00 to 59"},
		{name: "statement: generation 0", bundle: g.forge("signer", x5c, payload(gen0, `"generation":3`, `"generation":0`), gen0), step: signedimage.StepPayloadMembers, opts: highWater(0), about: finding + "generation >= 1"},
		{name: "statement: generation 3.0", bundle: g.honest(payload(img, `"generation":3`, `"generation":3.0`)), step: signedimage.StepPayloadMembers, about: "integers are spelt as digits"},
		{name: "statement: generation a string", bundle: g.honest(payload(img, `"generation":3`, `"generation":"3"`)), step: signedimage.StepPayloadMembers, about: "exact types"},
		{name: "statement: generation 2^53", bundle: g.honest(payload(img, `"generation":3`, `"generation":9007199254740992`)), step: signedimage.StepPayloadMembers, about: "at most 2^53-1"},
		{name: "statement: length -1", bundle: g.honest(payload(img, `"length":`+itoa(len(img)), `"length":-1`)), step: signedimage.StepPayloadMembers, about: "tamper class: a negative length"},
		{name: "statement: sha256 in upper case", bundle: g.honest(payload(img, sha(img), strings.ToUpper(sha(img)))), step: signedimage.StepPayloadMembers, about: "tamper class: lower-case hex"},
		{name: "statement: serial in upper case", bundle: g.honest(payload(img, serial, strings.ToUpper(serial))), step: signedimage.StepPayloadMembers, about: "lower-case hex"},
		{name: "statement: an unknown member", bundle: g.honest(payload(img, `"format":1,`, `"format":1,"evil":true,`)), step: signedimage.StepPayloadMembers, about: "tamper class: no other members"},

		// Step 18: the issue time.
		{name: "issuedAt before the signer's certificate", bundle: g.honest(payload(img, at(issued), "2026-05-01T00:00:00Z")), step: signedimage.StepIssueTime, about: "a signer vouches only while valid"},
		{name: "issuedAt after the signer's certificate ends", bundle: g.honest(payload(img, at(issued), "2026-09-15T00:00:00Z")), step: signedimage.StepIssueTime,
			about: "a future issuedAt beyond the signer's validity would raise the floor past it"},
		{name: "kept bundle issued after its signer expired", bundle: g.withSigner("signer-expired", "intermediate"), opts: kept(date(2027, 1, 1)), step: signedimage.StepIssueTime,
			about: "a kept bundle is checked at its issue time"},

		// Steps 19-24: device, generation, image.
		{name: "another device's bundle", bundle: g.good, opts: serialOf(otherSerial), step: signedimage.StepDevice, about: "tamper class: another device's valid bundle"},
		{name: "rollback", bundle: g.good, opts: highWater(4), step: signedimage.StepGeneration, about: "tamper class: an older generation, validly signed"},
		{name: "image over the cap", bundle: g.honest(payload(img, `"length":`+itoa(len(img)), `"length":2097153`)), step: signedimage.StepSizeLimit, about: "refused before any image byte is read"},
		{name: "image cut short", bundle: g.good[:len(g.good)-1], step: signedimage.StepImage, about: "tamper class: a truncated download"},
		{name: "a byte after the image", bundle: append(append([]byte{}, g.good...), 'x'), step: signedimage.StepTrailing, about: "tamper class: an oversized body"},
		{name: "image changed", bundle: flipLast(g.good), step: signedimage.StepDigest, about: "tamper class: one flipped bit"},

		// Steps 25-39: the pre-mount inspection; the cases of
		// inspectionCases follow this one.
		{name: "empty image", bundle: g.signed(nil), step: signedimage.StepInspection, check: "superblock-missing", about: "fuzz seed: a validly signed bundle of no image"},
	}, g.inspectionCases(), []spec{
		// Step 40: image.json.
		{name: "image.json issuedAt differs from the statement", bundle: g.signed(g.imageOf(record(generation, date(2026, 6, 15)), "")), step: signedimage.StepMetadata,
			about: finding + "issuedAt was not compared"},
		{name: "image.json members in another order", bundle: g.signed(g.imageOf(record(generation, issued),
			`{"serial":"1a2b3c4d5e","format":1,"generation":3,"issuedAt":"`+at(issued)+`"}`+"\n")), step: signedimage.StepMetadata, about: "image.json has one spelling"},
		{name: "image.json without its newline", bundle: g.signed(g.imageOf(record(generation, issued),
			`{"format":1,"serial":"1a2b3c4d5e","generation":3,"issuedAt":"`+at(issued)+`"}`)), step: signedimage.StepMetadata, about: "image.json has one spelling"},
		{name: "image.json member twice", bundle: g.signed(g.imageOf(record(generation, issued),
			`{"format":1,"serial":"0000000001","serial":"1a2b3c4d5e","generation":3,"issuedAt":"`+at(issued)+`"}`+"\n")), step: signedimage.StepMetadata, about: "image.json has one spelling: a lenient reader takes the last"},
		{name: "image.json member in another case", bundle: g.signed(g.imageOf(record(generation, issued),
			`{"format":1,"Serial":"1a2b3c4d5e","generation":3,"issuedAt":"`+at(issued)+`"}`+"\n")), step: signedimage.StepInspection, check: "metadata",
			about: "image.json names no serial: JSON names are exact (check 46 of the inspection); encoding/json matches names in any case"},
		{name: "image.json issuedAt with an offset", bundle: g.signed(g.imageOf(record(generation, issued),
			`{"format":1,"serial":"1a2b3c4d5e","generation":3,"issuedAt":"`+issued.In(time.FixedZone("", 3600)).Format(time.RFC3339)+`"}`+"\n")), step: signedimage.StepMetadata, about: "image.json has one spelling: the same instant at +01:00"},
	})
}

// findings names the tamper cases that are findings of issue 14: images the
// inspection of the time accepted.
var findings = map[string]string{
	"superblock-block-size-64k":     "64 KiB blocks (mksquashfs -b 65536) were accepted",
	"superblock-flags-duplicates":   "a flag the builder never sets (DUPLICATES) was accepted",
	"file-size-larger":              "a file larger than its data was accepted; the kernel then fails reading it with EIO",
	"dirent-type-file-as-directory": "a directory entry whose type disagrees with its inode was accepted",
}

// unreachable names the tamper cases no bundle can carry to the
// inspection, and why.
var unreachable = map[string]string{
	"image-size": "an image over the cap is refused at step 22 (too large), before any image byte is read",
}

// inspectionCases is one case per tamper case (core/imagebuild/squashfs/
// tamper): the suite's image changed so that one check of the inspection
// refuses it, signed honestly, so that only the inspection can refuse it.
func (g *gen) inspectionCases() []spec {
	var out []spec
	for _, c := range tamper.Cases() {
		if _, ok := unreachable[c.Name]; ok {
			continue
		}
		img, err := c.Make(g.image)
		if err != nil {
			g.fail(fmt.Errorf("inspection case %s: %w", c.Name, err))
			return nil
		}
		about := "inspection check " + c.Check
		if f, ok := findings[c.Name]; ok {
			about = finding + f
		}
		out = append(out, spec{name: "image: " + c.Name, bundle: g.signed(img), step: signedimage.StepInspection, check: c.Check, about: about})
	}
	return out
}
