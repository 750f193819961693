"""Timer values of the transaction layer (RFC 3261 Table 4; L and M from RFC 6026).

Every timer is a multiple of T1, T2 or T4, so a deployment tunes three numbers and
the rest follows. The values that only absorb retransmissions (D, I, J, K) are zero
over a reliable transport, where nothing is retransmitted: :meth:`Timers.over`
gives the view a transaction uses for its transport.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Timers"]


@dataclass(frozen=True, slots=True)
class Timers:
    """T1, T2, T4 and the timers derived from them, in seconds (RFC 3261 §17).

    ``reliable`` selects the values for a reliable transport (TCP, TLS, SCTP).
    """

    #: RTT estimate (RFC 3261 §17.1.1.1: "T1 is an estimate of the round-trip time")
    t1: float = 0.5
    #: "the maximum retransmit interval for non-INVITE requests and INVITE responses"
    t2: float = 4.0
    #: "the maximum duration a message will remain in the network"
    t4: float = 5.0
    reliable: bool = False

    def over(self, *, reliable: bool) -> Timers:
        """The same timers for a reliable or an unreliable transport."""
        return self if reliable == self.reliable else replace(self, reliable=reliable)

    @property
    def timer_a(self) -> float:
        """INVITE request retransmit interval, initially T1 (§17.1.1.2), UDP only."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE transaction timeout, 64*T1 (§17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_c(self) -> float:
        """Proxy INVITE transaction timeout (§16.6 step 11): more than 3 minutes.

        Kept here for completeness; the proxy core runs Timer C, not this layer.
        """
        return 181.0

    @property
    def timer_d(self) -> float:
        """Wait for response retransmits (§17.1.1.2).

        "Timer D [...] MUST be [...] at least 32 seconds for unreliable transports,
        and [...] zero seconds for reliable transports."
        """
        return 0.0 if self.reliable else 32.0

    @property
    def timer_e(self) -> float:
        """Non-INVITE request retransmit interval, first T1 (§17.1.2.2), UDP only."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE transaction timeout, 64*T1 (§17.1.2.2)."""
        return 64 * self.t1

    @property
    def timer_g(self) -> float:
        """INVITE response retransmit interval, initially T1 (§17.2.1), UDP only."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait time for ACK receipt, 64*T1 (§17.2.1)."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """Wait time for ACK retransmits: T4 over UDP, zero when reliable (§17.2.1)."""
        return 0.0 if self.reliable else self.t4

    @property
    def timer_j(self) -> float:
        """Wait time for non-INVITE request retransmits (§17.2.2).

        64*T1 over UDP, zero when reliable.
        """
        return 0.0 if self.reliable else 64 * self.t1

    @property
    def timer_k(self) -> float:
        """Wait time for response retransmits: T4 over UDP, zero when reliable.

        (RFC 3261 §17.1.2.2.)
        """
        return 0.0 if self.reliable else self.t4

    @property
    def timer_l(self) -> float:
        """Wait time for accepted INVITE request retransmits, 64*T1 (RFC 6026)."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """Wait time for retransmission of 2xx to INVITE, 64*T1 (RFC 6026)."""
        return 64 * self.t1
