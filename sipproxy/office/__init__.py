"""Office PBX features: extensions, ring groups, call forwarding, do-not-disturb.

Signalling only: voicemail and announcements live on a media server that calls
are forwarded to. The package, top-down:

- :mod:`~sipproxy.office.model`: the configuration as values (:class:`Office`,
  groups, forwarding) and :func:`parse_office`, which refuses bad TOML entries
  with a ``ValueError`` naming them (``sipproxy.config`` wraps it in its
  ``ConfigError``; nothing here imports the configuration);
- :mod:`~sipproxy.office.plan`: the sans-IO plan of one call (what to ring,
  where to forward, what to answer, given each attempt's outcome);
- :mod:`~sipproxy.office.headers`: Diversion and History-Info of a forwarded call;
- :mod:`~sipproxy.office.preferences`: forwarding and do-not-disturb set at run
  time, kept in the location store, winning over the TOML defaults.

The proxy core does the I/O: binding lookups, branches, timers, CANCELs.
"""
