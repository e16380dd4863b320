"""A service: one process serves a pool or a cluster to everyone else (`blockfold serve`).

    service.py      Service: the admin socket, NBD and metrics; runs until SIGTERM, then drains
    session.py      one client of the admin socket: its frames, its calls on threads, its actor
    methods.py      the Admin methods a client may call, arguments checked against their types
    served.py       ServedAdmin: the pool's Admin, with attachments, jobs and shared figures
    jobs.py         the long calls running, with progress and cancel
    streams.py      bytes that travel with a call: an image in, a write, an export out
    socketfile.py   DIR/admin.sock, made with its mode
    metrics.py      Prometheus figures: the pool's, and what NBD serves

Its clients use engine/remoteadmin.py; the protocol is engine/net/adminwire.py.
"""
