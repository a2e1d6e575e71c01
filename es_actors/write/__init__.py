"""The write path: the client batcher that groups commands per partition, the typed messages
it sends, both halves of the direct link, the command envelope and its interceptors, the
partition (recovery, hydration, dedup, decide, commit, snapshot policy; free of Ray), and the
Ray actor shell that hosts one partition.

Owns: turning a command into durably appended events, once. May import: domain, codecs,
storage, runtime, config, errors; never ``es_actors.read`` or the facade.
"""
