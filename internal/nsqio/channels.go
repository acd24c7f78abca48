package nsqio

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

// CreateChannels creates topic and its channels on the nsqd whose HTTP
// address is addr (nothing happens to those that exist). NSQ copies a
// message only to the channels that exist when it is published.
func CreateChannels(ctx context.Context, client *http.Client, addr, topic string, channels ...string) error {
	post := func(path string, q url.Values) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path+"?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("nsqd %s: %w", addr, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("nsqd %s: %s %s: %s", addr, path, q.Encode(), resp.Status)
		}
		return nil
	}
	// Channels can only be created in an existing topic.
	if err := post("/topic/create", url.Values{"topic": {topic}}); err != nil {
		return err
	}
	for _, ch := range channels {
		if err := post("/channel/create", url.Values{"topic": {topic}, "channel": {ch}}); err != nil {
			return err
		}
	}
	return nil
}
