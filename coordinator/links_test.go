package coordinator

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// links parses "a>b b>c" into failed links.
func links(s string) map[link]bool {
	m := map[link]bool{}
	for _, f := range strings.Fields(s) {
		from, to, _ := strings.Cut(f, ">")
		m[link{from, to}] = true
	}
	return m
}

// The ring chosen for each set of failed (and suspected) links: the same
// members in the order that avoids them, else the fewest left out,
// deterministically.
func TestChooseRing(t *testing.T) {
	for _, tc := range []struct {
		members, failed, suspect, want string
	}{
		{"a b c", "", "", "a b c"},
		{"a b c", "a>b", "", "a c b"}, // reversed: a->c, c->b, b->a
		{"a b c", "b>c", "", "a c b"},
		{"a b c", "c>a", "", "a c b"},
		{"a b c", "b>a", "", "a b c"},         // the failed direction is not used
		{"a b c", "a>b b>c c>a", "", "a c b"}, // every hop of the ring one way
		{"a b c", "a>b b>a", "", "a c"},       // a link dead both ways: a ring of 3 uses every pair
		{"a b c", "a>b b>a c>a a>c", "", "b c"},
		{"a b c", "b>c c>b", "", "a b"},
		{"a b c", "a>b b>c c>a b>a c>b a>c", "", "a"},
		{"a b", "a>b", "", "a"}, // two ranks send both ways
		{"a b", "", "", "a b"},
		{"a", "", "", "a"},
		{"a b c d", "a>b", "", "a c b d"},
		{"a b c d", "a>b b>a", "", "a c b d"}, // four can keep the pair apart
		{"a b c d", "a>b b>a c>d d>c", "", "a c b d"},
		{"a b c d", "a>b b>a b>c c>b", "", "a c d"}, // b has only d left: out
		{"a b c d", "a>x x>a", "", "a b c d"},       // links of workers not in the ring
		{"a b c d e", "a>b b>c c>d d>e e>a", "", "a c b e d"},
		// Suspected links are avoided when some order can, never at the cost
		// of a member.
		{"a b c", "", "a>b b>c c>a", "a c b"},
		{"a b c", "", "a>b b>a", "a b c"},
		{"a b c", "a>b b>a", "a>c", "b c"}, // of the rings of two, the one not suspected
		{"a b c d", "", "a>b b>c", "a c b d"},
		{"a b c d", "", "a>b a>c a>d", "a b c d"}, // every order leaves a: the first
	} {
		got := strings.Join(chooseRing(strings.Fields(tc.members), links(tc.failed), links(tc.suspect)), " ")
		if got != tc.want {
			t.Errorf("members %s, failed %q, suspected %q: ring %s, want %s", tc.members, tc.failed, tc.suspect, got, tc.want)
		}
	}
}

// Against an exhaustive search, on random failed links: the chosen ring
// avoids them all and leaves out no more members than the best ring does.
func TestChooseRingLeavesOutTheFewest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "b", "c", "d", "e", "f"}
	for trial := range 3000 {
		members := names[:1+trial%len(names)]
		failed := map[link]bool{}
		for range rng.IntN(2 * len(members)) {
			i, j := rng.IntN(len(members)), rng.IntN(len(members))
			if i != j {
				failed[link{members[i], members[j]}] = true
			}
		}
		suspect := map[link]bool{}
		for range rng.IntN(len(members)) {
			i, j := rng.IntN(len(members)), rng.IntN(len(members))
			suspect[link{members[i], members[j]}] = true
		}
		ring := chooseRing(members, failed, suspect)
		if !validRing(ring, failed) {
			t.Fatalf("members %v failed %v: ring %v uses a failed link", members, failed, ring)
		}
		if best := bestSize(members, failed); len(ring) != best {
			t.Fatalf("members %v failed %v: ring %v of %d, a ring of %d exists", members, failed, ring, len(ring), best)
		}
		if again := chooseRing(members, failed, suspect); !slices.Equal(again, ring) {
			t.Fatalf("not deterministic: %v then %v", ring, again)
		}
	}
}

// A search past its budget keeps the members that touch no failed link.
func TestChooseRingPastItsBudget(t *testing.T) {
	defer func(b int) { chooseBudget = b }(chooseBudget)
	chooseBudget = 1
	ring := chooseRing([]string{"a", "b", "c", "d"}, links("a>b"), nil)
	if strings.Join(ring, " ") != "c d" {
		t.Errorf("past the budget: %v", ring)
	}
}

func validRing(ring []string, failed map[link]bool) bool {
	if len(ring) < 2 {
		return len(ring) == 1
	}
	for r := range ring {
		if failed[link{ring[r], ring[(r+1)%len(ring)]}] {
			return false
		}
	}
	return true
}

// bestSize is the largest ring of members that avoids failed, by trying every
// subset in every order.
func bestSize(members []string, failed map[link]bool) int {
	best := 1
	for mask := 1; mask < 1<<len(members); mask++ {
		var sub []string
		for i, m := range members {
			if mask&(1<<i) != 0 {
				sub = append(sub, m)
			}
		}
		if len(sub) > best && anyOrder(sub, 1, failed) {
			best = len(sub)
		}
	}
	return best
}

// anyOrder permutes ring[k:] looking for a valid ring.
func anyOrder(ring []string, k int, failed map[link]bool) bool {
	if k == len(ring) {
		return validRing(ring, failed)
	}
	for i := k; i < len(ring); i++ {
		ring[k], ring[i] = ring[i], ring[k]
		ok := anyOrder(ring, k+1, failed)
		ring[k], ring[i] = ring[i], ring[k]
		if ok {
			return true
		}
	}
	return false
}

const (
	silent  = "allreduce: rank %d lost during all-reduce #7: nothing from %s for 20s (the collective's deadline)"
	sendErr = "allreduce: rank %d lost during all-reduce #7: send to %s: rpc error: code = Unavailable desc = error reading from server: EOF"
	relayed = "allreduce: rank %d lost during all-reduce #7: reported by rank %s: allreduce: rank ... nothing from ..."
	dialed  = "worker: joining re-formed ring 2: allreduce: rank %d lost during ring open: connect to %s: context deadline exceeded"
	waited  = "allreduce: rank %d lost during ring open: rank %[1]d (%s) did not connect within 1m0s"
	gossip  = "allreduce: rank %d lost during the ring: %s left the cluster"
)

// What one report says of its reporter's links.
func TestObserve(t *testing.T) {
	for _, tc := range []struct {
		world, rank, lost int
		reason            string
		want              string // "in|out peer", or "" for nothing
	}{
		{3, 1, 0, silent, "in 0"}, // heard nothing from its predecessor
		{3, 0, 1, sendErr, "out 1"},
		{3, 0, 2, silent, "in 2"},
		{3, 2, 0, relayed, ""}, // heard of it from its predecessor
		{3, 1, 0, gossip, ""},  // the gossip's word on a member, not a link
		{3, 1, -1, "worker: the coordinator is re-forming the ring", ""},
		{3, 1, 1, silent, ""},
		{3, 1, 3, silent, ""},
		{0, 0, 0, silent, ""},
		{4, 0, 2, silent, ""}, // no neighbour
		{3, 1, 2, dialed, "out 2"},
		{3, 2, 1, waited, "in 1"},
		{2, 0, 1, waited, "in 1"}, // a world of 2: the reason says which way
		{2, 0, 1, dialed, "out 1"},
		{2, 0, 1, sendErr, "out 1"},
		{2, 1, 0, silent, "in 0"},
	} {
		reason := fmt.Sprintf(tc.reason, tc.lost, "10.77.0.12:7950")
		o, ok := observe(tc.world, tc.rank, tc.lost, reason)
		got := ""
		if ok {
			got = fmt.Sprintf("out %d", o.peer)
			if o.in {
				got = fmt.Sprintf("in %d", o.peer)
			}
		}
		if got != tc.want {
			t.Errorf("world %d, rank %d lost %d (%q): %q, want %q", tc.world, tc.rank, tc.lost, reason, got, tc.want)
		}
	}
}

// The links shown failed or suspected by the reports of a broken ring, in
// the ways the ring breaks (ring a b c unless said; "-" is a member that did
// not ask; a report is "lost reason" with reason one of the consts above).
func TestBrokenLinks(t *testing.T) {
	for _, tc := range []struct {
		name            string
		ring            string
		reports         map[string]string // name -> "lostRank kind"
		failed, suspect string
	}{
		{"a killed: its neighbours lost it", "a b c",
			map[string]string{"b": "0 silent", "c": "0 send"}, "", ""},
		{"c cut off: b starved because a did", "a b c",
			map[string]string{"a": "2 silent", "b": "0 silent"}, "", ""},
		{"d cut off in a ring of four: the trail leads to it", "a b c d",
			map[string]string{"a": "3 silent", "b": "0 silent", "c": "1 silent"}, "", ""},
		{"a->b blackholed, b timed out first: a starved after c stopped", "a b c",
			map[string]string{"a": "2 silent", "b": "0 silent", "c": "0 relayed"}, "a>b a>c b>a c>a", ""},
		{"a->b blackholed, c timed out first", "a b c",
			map[string]string{"a": "1 relayed", "b": "0 silent", "c": "1 silent"}, "a>b b>a b>c c>b", ""},
		{"every rank timed out at once: some link, not which", "a b c",
			map[string]string{"a": "2 silent", "b": "0 silent", "c": "1 silent"}, "", "a>b b>c c>a"},
		{"the reversed ring did not open: b could not reach a", "a c b",
			map[string]string{"a": "2 waited", "b": "0 dialed", "c": "0 silent"}, "a>b a>c b>a c>a", ""},
		{"a pair in a world of two", "a b",
			map[string]string{"a": "1 silent", "b": "0 silent"}, "a>b b>a", ""},
		{"the gossip's word", "a b c",
			map[string]string{"a": "1 gossip", "c": "1 gossip"}, "", ""},
	} {
		ring := strings.Fields(tc.ring)
		reports := map[string]*controlpb.ReformRequest{}
		for name, rep := range tc.reports {
			lostS, kind, _ := strings.Cut(rep, " ")
			lost, _ := strconv.Atoi(lostS)
			format := map[string]string{"silent": silent, "send": sendErr, "relayed": relayed, "dialed": dialed, "waited": waited, "gossip": gossip}[kind]
			reports[name] = &controlpb.ReformRequest{Name: name, LostRank: int32(lost), Reason: fmt.Sprintf(format, lost, "x")}
		}
		f, s := brokenLinks(ring, reports)
		if got, want := sortedNames(f), sortedNames(linkList(tc.failed)); got != want {
			t.Errorf("%s: failed %s, want %s", tc.name, got, want)
		}
		if got, want := sortedNames(s), sortedNames(linkList(tc.suspect)); got != want {
			t.Errorf("%s: suspected %s, want %s", tc.name, got, want)
		}
	}
}

func linkList(s string) []link {
	var ls []link
	for l := range links(s) {
		ls = append(ls, l)
	}
	return ls
}

func sortedNames(ls []link) string {
	seen := map[string]bool{}
	var out []string
	for _, l := range ls {
		if n := l.from + ">" + l.to; !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}
