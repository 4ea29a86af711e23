// Package secrettest holds one test, TestNoSecretAnywhere: it plants a
// sentinel secret (password, ACL token, AWS secret key) in the URLs and
// environment of every backend, against real servers configured to accept
// it and against ones that refuse it or are not there, and checks that the
// sentinel appears in no error string (%v, %+v, %#v), no formatted value of
// stampede's types, no log line (slog, log, go-redis's logger) and no
// output of the stampede command. The package has no code of its own.
package secrettest
