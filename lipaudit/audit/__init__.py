"""The audit: the stages run in order (:mod:`.run`), their independent cross-checks (:mod:`.crosscheck`), the typed
result and its JSON schema (:mod:`.result`) and the invariants every result satisfies (:mod:`.validate`)."""
