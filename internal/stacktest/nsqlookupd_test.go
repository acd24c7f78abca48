package stacktest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestNSQDRegistersWithNSQLookupd(t *testing.T) {
	start := time.Now()
	l := StartNSQLookupd(t)
	t.Logf("StartNSQLookupd took %v", time.Since(start))
	n := StartNSQDWithLookupd(t, l.TCPAddr())

	for _, path := range []string{"/topic/create?topic=t", "/channel/create?topic=t&channel=c"} {
		resp, err := http.Post("http://"+n.HTTPAddr()+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", path, resp.Status)
		}
	}
	Eventually(t, 5*time.Second, func() error {
		var got struct {
			Channels  []string `json:"channels"`
			Producers []struct {
				BroadcastAddress string `json:"broadcast_address"`
				TCPPort          int    `json:"tcp_port"`
			} `json:"producers"`
		}
		resp, err := http.Get("http://" + l.HTTPAddr() + "/lookup?topic=t")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/lookup: %s", resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			return err
		}
		if len(got.Producers) != 1 || len(got.Channels) != 1 || got.Channels[0] != "c" ||
			net.JoinHostPort(got.Producers[0].BroadcastAddress, strconv.Itoa(got.Producers[0].TCPPort)) != n.TCPAddr() {
			return fmt.Errorf("/lookup?topic=t = %+v, want channel c on %s", got, n.TCPAddr())
		}
		return nil
	})

	l.Stop()
	if err := PingNSQ(l.HTTPAddr()); err == nil {
		t.Error("nsqlookupd answers /ping after Stop")
	}
}
