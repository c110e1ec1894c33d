package conntrack

import "github.com/flowlens/flowlens/pkg/flow"

// EventType says what happened to a connection, or that events were lost.
type EventType uint8

// Event types.
const (
	// EventNew is a connection the kernel just confirmed. It carries no
	// counters yet.
	EventNew EventType = iota + 1
	// EventUpdate is a change of state or mark (Config.UpdateEvents).
	EventUpdate
	// EventDestroy is a connection the kernel removed, with its final
	// counters and, with timestamps on, its stop time.
	EventDestroy
	// EventOverrun says the kernel dropped events because the socket's
	// buffer was full: the caller should resynchronise with a Dump.
	EventOverrun
	// EventBatchEnd (with Config.EventBatchDelay only) says the events
	// before it were read together and the next come after a pause: a
	// consumer that hands events on in batches sends its batch now.
	EventBatchEnd
)

func (t EventType) String() string {
	switch t {
	case EventNew:
		return "new"
	case EventUpdate:
		return "update"
	case EventDestroy:
		return "destroy"
	case EventOverrun:
		return "overrun"
	case EventBatchEnd:
		return "batch-end"
	}
	return "unknown"
}

// Event is one conntrack event. Conn is reused between events: it is valid
// only during the callback and is nil for EventOverrun and EventBatchEnd.
type Event struct {
	Type EventType
	Conn *flow.Conn
}

// eventType maps a ctnetlink message to an event type; ok is false for
// messages that are not conntrack entry events (e.g. expectations).
func eventType(m nlMsg) (EventType, bool) {
	if m.typ>>8 != nfnlSubsysCTNetlink {
		return 0, false
	}
	switch m.typ & 0xff {
	case ipctnlMsgCTNew:
		if m.flags&(nlmFCreate|nlmFExcl) != 0 {
			return EventNew, true
		}
		return EventUpdate, true
	case ipctnlMsgCTDelete:
		return EventDestroy, true
	}
	return 0, false
}
