package flight

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// NormalizeKey is the default key normaliser. It makes "Apple Inc.",
// "Apple Inc", "APPLE INC." and "apple  inc" one key, the same in every
// process and every version of this package built with the same Unicode
// tables. In order, repeated until the result no longer changes:
//
//  1. invalid UTF-8 bytes become U+FFFD;
//  2. Unicode compatibility composition (NFKC), full case folding
//     (golang.org/x/text/cases.Fold), then NFKC again, so "ﬁ", "FI" and
//     "fi" agree, as do "Straße" and "STRASSE", and precomposed and
//     decomposed accents;
//  3. every run of white space (unicode.IsSpace, after NFKC also the
//     no-break and other wide spaces) becomes one ASCII space, and leading
//     and trailing space is dropped;
//  4. trailing punctuation (unicode.IsPunct: . , ! ? ; : ' " - _ ) ] and
//     the like, not symbols such as $ + or %) is dropped, with the space
//     before it.
//
// Inner punctuation stays ("AT&T" is not "ATT", "a.b" is not "a b"). A key
// that normalises to "" (only spaces and punctuation) is invalid. Keys
// that are already normal ASCII are returned as they are, without
// allocating.
func NormalizeKey(s string) string {
	if isNormalASCII(s) {
		return s
	}
	return normalizeSlow(s)
}

// normalizeSlow is NormalizeKey past the ASCII fast path. It is kept out
// of line: its frame is large, and a caller's goroutine would otherwise
// grow its stack on every call, fast path included.
//
//go:noinline
func normalizeSlow(s string) string {
	for range 4 {
		n := normalizeOnce(s)
		if n == s {
			break
		}
		s = n
	}
	return s
}

// Identity is a Normalize function that keeps keys exactly as given.
func Identity(s string) string { return s }

// isNormalASCII reports whether s is printable ASCII that NormalizeKey
// would return unchanged: no upper case, no control characters, single
// inner spaces, no leading or trailing space, no trailing punctuation.
// It is on every call's path (the L1 hit included): one table load and
// one well-predicted branch per ordinary byte.
func isNormalASCII(s string) bool {
	if s == "" {
		return true
	}
	prevSpace := true // no leading space
	for i := 0; i < len(s); i++ {
		k := asciiClass[s[i]]
		if k < classSpace {
			prevSpace = false
			continue
		}
		if k == classBad || prevSpace {
			return false
		}
		prevSpace = true
	}
	return !prevSpace && asciiClass[s[len(s)-1]] != classPunct
}

// The classes of asciiClass, ordered so that the bytes that may be
// anywhere in a normal key come first.
const (
	classPlain uint8 = iota // kept as it is anywhere
	classPunct              // unicode.IsPunct: kept, but not last
	classSpace              // ' ': single, inner
	classBad                // anything else: control, upper case, not ASCII
)

// asciiClass is the class of each byte for isNormalASCII.
var asciiClass = func() (t [256]uint8) {
	for i := range t {
		c := byte(i)
		switch {
		case c == ' ':
			t[i] = classSpace
		case c < 0x20 || c >= 0x7f || ('A' <= c && c <= 'Z'):
			t[i] = classBad
		case asciiPunct(c):
			t[i] = classPunct
		}
	}
	return t
}()

// asciiPunct is unicode.IsPunct for an ASCII byte.
func asciiPunct(c byte) bool {
	switch c {
	case '!', '"', '#', '%', '&', '\'', '(', ')', '*', ',', '-', '.', '/', ':', ';', '?', '@', '[', '\\', ']', '_', '{', '}':
		return true
	}
	return false
}

func normalizeOnce(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = norm.NFKC.String(s)
	s = cases.Fold().String(s) // a Caser is stateful: one per call
	s = norm.NFKC.String(s)

	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	out := b.String()
	for {
		r, size := utf8.DecodeLastRuneInString(out)
		if size == 0 || !unicode.IsPunct(r) {
			break
		}
		out = strings.TrimRightFunc(out[:len(out)-size], unicode.IsSpace)
	}
	return out
}
