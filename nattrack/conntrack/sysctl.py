"""Conntrack settings under their kernel names, with the kernel's defaults.

Models the per-namespace sysctl table of nf_conntrack_standalone.c
(``net.netfilter.nf_conntrack_*``).  Values are plain numbers; timeouts are in
seconds as the sysctl files show them.
"""
from __future__ import annotations

from typing import Mapping

PREFIX = "net.netfilter."

DEFAULTS: dict[str, int] = {
    "nf_conntrack_max": 262144,
    "nf_conntrack_buckets": 262144,
    "nf_conntrack_checksum": 1,
    "nf_conntrack_acct": 0,
    "nf_conntrack_timestamp": 0,
    "nf_conntrack_events": 2,
    "nf_conntrack_log_invalid": 0,
    "nf_conntrack_generic_timeout": 600,
    "nf_conntrack_gre_timeout": 30,
    "nf_conntrack_gre_timeout_stream": 180,
    "nf_conntrack_icmp_timeout": 30,
    "nf_conntrack_udp_timeout": 30,
    "nf_conntrack_udp_timeout_stream": 120,
    "nf_conntrack_tcp_timeout_syn_sent": 120,
    "nf_conntrack_tcp_timeout_syn_recv": 60,
    "nf_conntrack_tcp_timeout_established": 432000,
    "nf_conntrack_tcp_timeout_fin_wait": 120,
    "nf_conntrack_tcp_timeout_close_wait": 60,
    "nf_conntrack_tcp_timeout_last_ack": 30,
    "nf_conntrack_tcp_timeout_time_wait": 120,
    "nf_conntrack_tcp_timeout_close": 10,
    "nf_conntrack_tcp_timeout_max_retrans": 300,
    "nf_conntrack_tcp_timeout_unacknowledged": 300,
    "nf_conntrack_tcp_loose": 1,
    "nf_conntrack_tcp_be_liberal": 0,
    "nf_conntrack_tcp_ignore_invalid_rst": 0,
    "nf_conntrack_tcp_max_retrans": 3,
}


class SysctlError(ValueError):
    pass


class Sysctl(dict[str, int]):
    """The settings of one tracker: a dict keyed by the short kernel name.

    ``set("net.netfilter.nf_conntrack_udp_timeout", "10")`` and
    ``set("nf_conntrack_udp_timeout", 10)`` are the same; unknown names are an
    error that lists what exists.
    """

    def __init__(self, overrides: Mapping[str, int | str] | None = None) -> None:
        super().__init__(DEFAULTS)
        for key, value in (overrides or {}).items():
            self.set(key, value)

    @staticmethod
    def short(key: str) -> str:
        return key[len(PREFIX):] if key.startswith(PREFIX) else key

    def set(self, key: str, value: int | str) -> None:
        name = self.short(key)
        if name not in DEFAULTS:
            raise SysctlError(f"unknown setting {key!r}; known: {', '.join(PREFIX + k for k in DEFAULTS)}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise SysctlError(f"{PREFIX}{name}: {value!r} is not an integer") from None
        if number < 0:
            raise SysctlError(f"{PREFIX}{name}: {value!r} must not be negative")
        self[name] = number

    def get_full(self, key: str) -> int:
        name = self.short(key)
        if name not in self:
            raise SysctlError(f"unknown setting {key!r}")
        return self[name]

    def lines(self) -> list[str]:
        """`sysctl -a` style lines for every setting."""
        return [f"{PREFIX}{k} = {v}" for k, v in sorted(self.items())]
