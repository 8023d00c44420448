"""Side-by-side benchmark of ossl_ktls against what a user would pick instead.

``python -m bench`` measures, in one run and with interleaved repetitions:

* bulk transfers, sender measured alone (the receiver is another process that discards
  ciphertext after its handshake): ossl_ktls ``sendfile`` and ``sendall``, pyOpenSSL in
  user space, the stdlib ``ssl`` module, OpenSSL's own C kTLS path (``openssl s_server
  -WWW -sendfile`` with ``Options = KTLS``) and plain TCP ``sendfile`` as the ceiling;
* the reverse direction (a peer pushes, the receiver is measured);
* 1 KiB request/response round trips, connections per second with ``wrap()``'s share of
  the handshake, and concurrent transfers through ``python -m ossl_ktls serve``.

It writes ``docs/benchmarks.md``, ``docs/benchmarks.json`` and PNG plots. ``python -m bench
--vm 7.2`` runs the measurements inside the lab's Debian 7.2 kernel (QEMU TCG) and writes
the report on the host. See ``python -m bench --help``.

Layout: :mod:`bench.common` (suites, certificates, contexts, CPU accounting),
:mod:`bench.worker` (the measuring endpoints, one process each), :mod:`bench.run` (the
orchestrator and the command line), :mod:`bench.report` (statistics, Markdown, JSON, plots).
"""
