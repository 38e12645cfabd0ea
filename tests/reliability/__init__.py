"""Reliability and security suite (issue 6): faults, hostile peers, local security.

Every test takes the ``api`` fixture of tests/conftest.py, so it runs against each
implementation (pure Python and the C library). Peers that must live in another process
(to be SIGKILLed, to run as another uid, to be a live server elsewhere) are
``tests/reliability/peer.py`` started with :class:`tests.reliability._util.Peer`.
"""
