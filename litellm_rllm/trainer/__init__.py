"""The trainer's live interface: rewards and episode ends, policy versions, the change feed,
pause for weight sync (`docs/trainer.md`).

`schema` (records and input checks) and `versions` (stamping, read filters) are plain data;
`signal` wakes waiting coroutines from any thread; `live` polls the store for versions and
pauses and publishes this proxy's in-flight counts; `pause` is the pre-call gate; `remote` is
the HTTP client side (`litellm_rllm.client.reward/finish/follow`). The store side (tables,
feed positions) is `store/trainer_store.py` and its two backends.
"""
