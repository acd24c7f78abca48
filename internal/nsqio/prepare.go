package nsqio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"
)

// ErrNoNSQD is PrepareLookupdTopics' error when no nsqlookupd lists an nsqd.
var ErrNoNSQD = errors.New("no nsqd registered with nsqlookupd")

// PrepareLookupdTopics readies topics for consumers that find their nsqd
// through the nsqlookupd at lookupdHTTP: it creates each topic and its
// channels (topics maps a topic to them) on every nsqd those nsqlookupd
// list, then waits, at most wait, until each nsqlookupd lists, for every
// topic, each of its nsqd that took it.
//
// A go-nsq consumer asks nsqlookupd for its topic once when it connects,
// then every poll interval. On a first start no nsqd has the topic yet, so
// without this its first purge waits for the next poll (seconds); after it
// the first query finds every nsqd. Creating a topic or channel that exists
// changes nothing.
//
// It returns nil when every topic is listed with every nsqd; otherwise what
// is missing (ErrNoNSQD if no nsqd is registered yet): the consumers still
// work, they find the rest at a later poll.
func PrepareLookupdTopics(ctx context.Context, client *http.Client, lookupdHTTP []string, topics map[string][]string, wait time.Duration) error {
	// The nsqd each nsqlookupd lists, by TCP address.
	var errs []error
	listed := map[string][]string{}
	var nsqds []NSQD
	for _, l := range lookupdHTTP {
		nodes, err := LookupdNSQDs(ctx, client, l)
		if err != nil {
			errs = append(errs, fmt.Errorf("nsqlookupd %s: %w", l, err))
			continue
		}
		listed[l] = []string{}
		for _, n := range nodes {
			listed[l] = append(listed[l], n.TCPAddr)
			if !slices.ContainsFunc(nsqds, func(m NSQD) bool { return m.TCPAddr == n.TCPAddr }) {
				nsqds = append(nsqds, n)
			}
		}
	}
	if len(listed) == 0 {
		return errors.Join(errs...)
	}
	if len(nsqds) == 0 {
		return errors.Join(append(errs, ErrNoNSQD)...)
	}

	names := make([]string, 0, len(topics))
	for topic := range topics {
		names = append(names, topic)
	}
	sort.Strings(names)
	// Every nsqd at once: one that is listed but gone (nsqlookupd keeps a
	// crashed nsqd until its heartbeats are missed) costs one timeout.
	createErrs := make([]error, len(nsqds))
	var wg sync.WaitGroup
	for i, n := range nsqds {
		wg.Go(func() {
			for _, topic := range names {
				if err := CreateChannels(ctx, client, n.HTTPAddr, topic, topics[topic]...); err != nil {
					createErrs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	var took []string
	for i, err := range createErrs {
		if err != nil {
			errs = append(errs, err)
		} else {
			took = append(took, nsqds[i].TCPAddr)
		}
	}

	if len(took) == 0 {
		return errors.Join(errs...)
	}
	// nsqd registers a new topic with its nsqlookupd in the background.
	deadline := time.Now().Add(wait)
	for {
		missing := missingRegistrations(ctx, client, listed, took, names)
		if missing == nil {
			return errors.Join(errs...)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return errors.Join(append(errs, missing)...)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// missingRegistrations returns an error naming the first topic an
// nsqlookupd does not yet list with one of its nsqd that took the topic (in
// took), nil if there is none.
func missingRegistrations(ctx context.Context, client *http.Client, listed map[string][]string, took, topics []string) error {
	lookupds := make([]string, 0, len(listed))
	for l := range listed {
		lookupds = append(lookupds, l)
	}
	sort.Strings(lookupds)
	for _, l := range lookupds {
		for _, topic := range topics {
			have, err := LookupdTopic(ctx, client, l, topic)
			if err != nil {
				return fmt.Errorf("nsqlookupd %s: topic %s: %w", l, topic, err)
			}
			for _, want := range listed[l] {
				if slices.Contains(took, want) && !slices.ContainsFunc(have, func(n NSQD) bool { return n.TCPAddr == want }) {
					return fmt.Errorf("nsqlookupd %s does not list nsqd %s for topic %s yet", l, want, topic)
				}
			}
		}
	}
	return nil
}
