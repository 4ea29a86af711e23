package flight

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestNormalizeKey(t *testing.T) {
	for in, want := range map[string]string{
		"Apple Inc.":         "apple inc",
		"Apple Inc":          "apple inc",
		"APPLE INC.":         "apple inc",
		"apple  inc":         "apple inc",
		"  apple\t\ninc !?":  "apple inc",
		"apple\u00a0inc":     "apple inc", // no-break space
		"ＡＰＰＬＥ　ＩＮＣ．":         "apple inc", // full-width letters, space and stop
		"Straße":             "strasse",
		"STRASSE":            "strasse",
		"Cafe\u0301":         "café", // decomposed accent
		"CAFÉ":               "café",
		"ﬁnance":             "finance", // ligature
		"AT&T":               "at&t",
		"a.b.":               "a.b",
		"price $":            "price $", // symbols are not punctuation
		"...":                "",
		"":                   "",
		"\xff\xfeX":          "\ufffdx", // one U+FFFD per run of bad bytes
		"Société Générale, ": "société générale",
	} {
		if got := NormalizeKey(in); got != want {
			t.Errorf("NormalizeKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNormalizeKeyNoAlloc(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = NormalizeKey("apple inc") }); n != 0 {
		t.Fatalf("%v allocations for a normal key, want 0", n)
	}
}

// checkNormal asserts the invariants of NormalizeKey's output.
func checkNormal(t *testing.T, in, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("NormalizeKey(%q) = %q: invalid UTF-8", in, out)
	}
	if again := NormalizeKey(out); again != out {
		t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
	}
	if strings.HasPrefix(out, " ") || strings.HasSuffix(out, " ") || strings.Contains(out, "  ") {
		t.Fatalf("NormalizeKey(%q) = %q: stray spaces", in, out)
	}
	for _, r := range out {
		if unicode.IsSpace(r) && r != ' ' {
			t.Fatalf("NormalizeKey(%q) = %q: space %U kept", in, out, r)
		}
	}
	if r, _ := utf8.DecodeLastRuneInString(out); out != "" && unicode.IsPunct(r) {
		t.Fatalf("NormalizeKey(%q) = %q: trailing punctuation", in, out)
	}
	// The ASCII fast path agrees with the full path.
	if isNormalASCII(in) && normalizeOnce(in) != in {
		t.Fatalf("fast path keeps %q, full path gives %q", in, normalizeOnce(in))
	}
	// Case-insensitive: upper-casing the input changes nothing (for
	// inputs where upper-casing is itself reversible by folding).
	if up := strings.ToUpper(in); utf8.ValidString(in) && NormalizeKey(up) != out && strings.EqualFold(up, in) && isASCII(in) {
		t.Fatalf("NormalizeKey(%q) = %q but NormalizeKey(%q) = %q", in, out, up, NormalizeKey(up))
	}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func FuzzNormalizeKey(f *testing.F) {
	for _, s := range []string{"Apple Inc.", "APPLE INC", "apple  inc", "Straße", "ＡＰＰＬＥ", "a.b.", "\xff", " . ", "ǅ", "ΐ", "ﬃ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkNormal(t, s, NormalizeKey(s)) })
}
