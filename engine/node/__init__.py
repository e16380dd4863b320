"""One node of a cluster: the application behind `blockfold node serve`.

    store.py            what a node keeps: blocks by id, a catalog replica, the write lease
    handler.py          the RPC methods, one per request type (a table), over the store
    errors.py           a node's refusals and the one map from an exception to a wire code
    keys.py             key files, the host key, and who a login is (rpc, console, actor)
    settings.py         DATA/node.json: the node's name and block size
    server.py           the asyncssh server: sessions, serve(), run()
    console_session.py  the console served to an admin key on a pty

It uses engine.net (framing, codes) and the engine's storage rooms; nothing in engine.net or
engine.cluster's coordinator imports it (engine.cluster.lifecycle only prepares data dirs).
"""
