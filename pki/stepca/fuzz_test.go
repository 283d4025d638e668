package stepca

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"
	"unicode/utf8"
)

// FuzzAnswers feeds whatever a server could send to the code that reads
// step-ca's answers: a 2xx sign or renew answer yields a non-empty chain or
// ErrBadAnswer, and a refusal yields a *Error with a short, valid message.
func FuzzAnswers(f *testing.F) {
	f.Add([]byte(`{"crt":"","ca":"","certChain":[]}`))
	f.Add([]byte(`{"certChain":["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]}`))
	f.Add([]byte(`{"status":400,"message":"The request could not be completed: certificate with serial number '1' is already revoked."}`))
	f.Add([]byte("\xff\xfe not utf-8"))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ans signResponse
		if json.Unmarshal(body, &ans) == nil {
			chain, err := ans.chain()
			if err == nil && len(chain) == 0 {
				t.Fatal("an empty chain without an error")
			}
			if err != nil && !errors.Is(err, ErrBadAnswer) {
				t.Fatalf("chain error %v is not ErrBadAnswer", err)
			}
		}
		err := refusal(&http.Response{StatusCode: http.StatusBadRequest, Body: io.NopCloser(bytes.NewReader(body))})
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusBadRequest {
			t.Fatalf("refusal gave %v", err)
		}
		if !utf8.ValidString(e.Message) || len(e.Message) > maxMessage+len("...") {
			t.Fatalf("message of %d bytes, valid UTF-8 %v", len(e.Message), utf8.ValidString(e.Message))
		}
	})
}
