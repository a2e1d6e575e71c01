"""The Ray runtime: starting or joining Ray (loopback-only when started here), naming and
finding a store's actors, unwrapping actor errors, metrics and worker-process tuning.

Owns: what is Ray-specific and shared by both paths. May import: storage (for a store's
identity), config, errors; never the write path, the read path or the facade.
"""
