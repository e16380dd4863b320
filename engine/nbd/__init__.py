"""The NBD export: serves every VM of an `engine.api.Admin` to hypervisors and standard tools."""
