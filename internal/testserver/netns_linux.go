//go:build linux

package testserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Net is a private network for the members of a test cluster, so that a
// test can partition one of them: each member runs in a network namespace
// of its own, joined by a veth pair to a bridge in this process's
// namespace, on its own address of a random private /24 (10.x.y.0/24; the
// bridge is 10.x.y.1, member i is 10.x.y.(10+i)). Members reach each other
// and this process reaches them through the bridge. [Net.Cut] sets member
// i's end of the bridge down: packets to and from it are dropped (no
// reset, no refusal, no "no route to host": every neighbour entry is
// static) until [Net.Heal].
//
// A server is started inside member i's namespace by running its command
// line behind the wrapper [Net.Member] returns (ip netns exec NAME; ip
// executes the server in place, so its pid is the server's), listening on
// the member's address.
//
// Every name (namespaces, links) carries a random id of the Net, so Nets
// of parallel test binaries never collide. A Net needs root (these test
// machines run as root) and the ip command of iproute2; without them
// NewNet fails. Its methods are safe for concurrent use.
type Net struct {
	id     string // netID hex characters, in every name
	prefix string // "10.x.y."
	ipBin  string // the ip command
	dir    string // the marker directory (owner file), removed last
	n      int

	mu     sync.Mutex
	cut    []bool
	closed bool
}

// netNamePrefix starts every namespace and link name of a Net: "stn" + id
// + a letter + member index stays within the 15 bytes of a link name.
const netNamePrefix = "stn"

// netDirPrefix starts the marker directory of a Net in os.TempDir(): it
// holds the owner file (the process that created the Net), so that the
// namespaces and links of a test binary that was killed are removed by the
// next NewNet. (It must not match the "stampede-*-*" directories of
// servers, which sweep removes without knowing of namespaces.)
const netDirPrefix = "stampedenet-"

const netIDLen = 6 // hex characters

var netSweepOnce sync.Once

// NewNet creates the network for n members (at most 200): the bridge, and
// per member a namespace with its veth pair, addresses and links up. It
// blocks until then or until ctx is done; on failure nothing is left.
// Close removes it all.
func NewNet(ctx context.Context, n int) (*Net, error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("testserver: net of %d members", n)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("testserver: network namespaces need root")
	}
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("testserver: network namespaces need iproute2's ip: %w", err)
	}
	netSweepOnce.Do(func() { sweepNets(ctx, ipBin) })
	nw := &Net{ipBin: ipBin, n: n, cut: make([]bool, n)}
	for try := 0; ; try++ {
		nw.id = randomHex(netIDLen / 2)
		nw.dir = filepath.Join(os.TempDir(), netDirPrefix+nw.id)
		if err = os.Mkdir(nw.dir, 0o755); err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || try == 5 {
			return nil, fmt.Errorf("testserver: net: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(nw.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err != nil {
		os.RemoveAll(nw.dir)
		return nil, fmt.Errorf("testserver: net: %w", err)
	}
	if err := nw.create(ctx); err != nil {
		nw.Close()
		return nil, fmt.Errorf("testserver: net: %w", err)
	}
	return nw, nil
}

func (nw *Net) bridge() string        { return netNamePrefix + nw.id + "b" }
func (nw *Net) hostLink(i int) string { return netNamePrefix + nw.id + "h" + strconv.Itoa(i) }
func (nw *Net) peerLink(i int) string { return netNamePrefix + nw.id + "p" + strconv.Itoa(i) }
func (nw *Net) ns(i int) string       { return netNamePrefix + nw.id + "n" + strconv.Itoa(i) }

func (nw *Net) create(ctx context.Context) error {
	prefix, err := freeSubnet(ctx, nw.ipBin)
	if err != nil {
		return err
	}
	nw.prefix = prefix
	br := nw.bridge()
	steps := [][]string{
		{"link", "add", br, "address", nw.mac(1), "type", "bridge"},
		{"addr", "add", nw.HostIP() + "/24", "dev", br},
		{"link", "set", br, "up"},
	}
	for i := range nw.n {
		ns, h, p := nw.ns(i), nw.hostLink(i), nw.peerLink(i)
		ip, _ := nw.Member(i)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"link", "add", h, "type", "veth", "peer", "name", p, "address", nw.mac(10 + i), "netns", ns},
			[]string{"link", "set", h, "master", br},
			[]string{"link", "set", h, "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", ns, "addr", "add", ip + "/24", "dev", p},
			[]string{"-n", ns, "link", "set", p, "up"},
		)
	}
	// Static neighbour entries everywhere: no ARP, so a cut member's
	// packets are dropped silently however long the cut lasts (with ARP,
	// a failed neighbour entry would turn the silence into "no route to
	// host" after a few seconds).
	for i := range nw.n {
		ip, _ := nw.Member(i)
		steps = append(steps, []string{"neigh", "replace", ip, "lladdr", nw.mac(10 + i), "dev", br, "nud", "permanent"})
		steps = append(steps, []string{"-n", nw.ns(i), "neigh", "replace", nw.HostIP(), "lladdr", nw.mac(1), "dev", nw.peerLink(i), "nud", "permanent"})
		for j := range nw.n {
			if j != i {
				jip, _ := nw.Member(j)
				steps = append(steps, []string{"-n", nw.ns(i), "neigh", "replace", jip, "lladdr", nw.mac(10 + j), "dev", nw.peerLink(i), "nud", "permanent"})
			}
		}
	}
	for _, s := range steps {
		if err := runIP(ctx, nw.ipBin, s...); err != nil {
			return err
		}
	}
	return nil
}

// mac is the link address of host octet oct of the subnet (locally
// administered, unique per subnet).
func (nw *Net) mac(oct int) string {
	var x, y int
	fmt.Sscanf(nw.prefix, "10.%d.%d.", &x, &y)
	return fmt.Sprintf("02:73:%02x:%02x:00:%02x", x, y, oct)
}

// Members returns the number of members.
func (nw *Net) Members() int { return nw.n }

// HostIP returns this process's address on the bridge.
func (nw *Net) HostIP() string { return nw.prefix + "1" }

// Member returns member i's address and the command line to put before a
// server's binary and arguments to run it in member i's namespace.
func (nw *Net) Member(i int) (ip string, wrap []string) {
	return nw.prefix + strconv.Itoa(10+i), []string{nw.ipBin, "netns", "exec", nw.ns(i)}
}

// Cut partitions member i away: its link to the bridge goes down, so
// nothing reaches it and nothing it sends arrives, until Heal(i). Cutting
// a member already cut does nothing.
func (nw *Net) Cut(i int) error { return nw.setCut(i, true) }

// Heal undoes Cut(i): member i's link to the bridge is up again. Healing
// a member not cut does nothing.
func (nw *Net) Heal(i int) error { return nw.setCut(i, false) }

// IsCut reports whether member i is cut off.
func (nw *Net) IsCut(i int) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return i >= 0 && i < nw.n && nw.cut[i]
}

func (nw *Net) setCut(i int, cut bool) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if i < 0 || i >= nw.n {
		return fmt.Errorf("testserver: net: no member %d of %d", i, nw.n)
	}
	if nw.closed {
		return errors.New("testserver: net: closed")
	}
	if nw.cut[i] == cut {
		return nil
	}
	state := "up"
	if cut {
		state = "down"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := runIP(ctx, nw.ipBin, "link", "set", nw.hostLink(i), state); err != nil {
		return fmt.Errorf("testserver: net: member %d %s: %w", i, state, err)
	}
	nw.cut[i] = cut
	return nil
}

// Close removes the namespaces, links and bridge (stop the servers in
// them first: a process left in a namespace keeps it alive, unnamed). It
// is idempotent.
func (nw *Net) Close() error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.closed {
		return nil
	}
	nw.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := removeNet(ctx, nw.ipBin, nw.id)
	if rerr := os.RemoveAll(nw.dir); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("testserver: net: close: %w", err)
	}
	return nil
}

// removeNet deletes every namespace and link whose name carries id (a
// namespace's deletion takes its veth pair with it).
func removeNet(ctx context.Context, ipBin, id string) error {
	var errs []error
	out, err := exec.CommandContext(ctx, ipBin, "netns", "list").Output()
	if err != nil {
		errs = append(errs, fmt.Errorf("ip netns list: %w", err))
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, netNamePrefix+id) {
			errs = append(errs, runIP(ctx, ipBin, "netns", "del", name))
		}
	}
	links, err := net.Interfaces()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Name, netNamePrefix+id) {
			if err := runIP(ctx, ipBin, "link", "del", l.Name); err != nil && linkExists(l.Name) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// sweepNets removes the Nets of test binaries that are gone (their owner
// file names a dead process).
func sweepNets(ctx context.Context, ipBin string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), netDirPrefix+"*"))
	for _, d := range dirs {
		id := strings.TrimPrefix(filepath.Base(d), netDirPrefix)
		if len(id) != netIDLen {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			// Being created, or its creator died before writing it:
			// judge by age.
			if fi, serr := os.Stat(d); serr != nil || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		} else if tagAlive(string(b)) {
			continue
		}
		if removeNet(ctx, ipBin, id) == nil {
			os.RemoveAll(d)
		}
	}
}

// freeSubnet picks a random 10.x.y.0/24 that no interface address and no
// route of this namespace overlaps, and returns "10.x.y.".
func freeSubnet(ctx context.Context, ipBin string) (string, error) {
	out, err := exec.CommandContext(ctx, ipBin, "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return "", fmt.Errorf("ip route: %w", err)
	}
	var taken []*net.IPNet
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, n, err := net.ParseCIDR(dst); err == nil {
			taken = append(taken, n)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			taken = append(taken, n)
		}
	}
	b := make([]byte, 2)
	for range 100 {
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		x := 64 + int(b[0])%190 // 10.64.0.0 to 10.253.255.0
		cand := &net.IPNet{IP: net.IPv4(10, byte(x), b[1], 0).To4(), Mask: net.CIDRMask(24, 32)}
		free := true
		for _, n := range taken {
			if n.Contains(cand.IP) || cand.Contains(n.IP) {
				free = false
				break
			}
		}
		if free {
			return fmt.Sprintf("10.%d.%d.", x, b[1]), nil
		}
	}
	return "", errors.New("no free 10.x.y.0/24")
}

// runIP runs ip with args, returning its output in the error.
func runIP(ctx context.Context, ipBin string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, ipBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
