package config

import (
	"testing"
	"time"
)

// Tokens created through the admin API expire by default (issue 11,
// finding 4); "0s" is the explicit, documented way to lift the cap.
func TestAdminMaxTokenTTLDefault(t *testing.T) {
	s, _, err := ParseStepfort(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Admin.MaxTokenTTL.Duration; got != 2160*time.Hour {
		t.Errorf("default admin.maxTokenTTL = %s, want 2160h", got)
	}
	s, _, err = ParseStepfort([]byte(`{"admin":{}}`))
	if err != nil || s.Admin.MaxTokenTTL.Duration != 2160*time.Hour {
		t.Errorf(`{"admin":{}} gives maxTokenTTL %v (err %v), want 2160h`, s.Admin.MaxTokenTTL, err)
	}
	s, _, err = ParseStepfort([]byte(`{"admin":{"maxTokenTTL":"0s"}}`))
	if err != nil || s.Admin.MaxTokenTTL.Duration != 0 {
		t.Errorf(`"0s" gives maxTokenTTL %v (err %v), want 0 (no cap)`, s.Admin.MaxTokenTTL, err)
	}
}
