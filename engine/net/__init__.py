"""SSH transport: the node server, the client connection and the framed RPC between them."""
