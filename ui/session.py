"""What one browser session keeps: every st.session_state key, the URL parameter and the cookie, named once."""

JOB = "job"  # the TrainingJob this session shows: its own, or one it watches through a shared link
RUN_PARAM = "run"  # URL query parameter with the run's id, so a reload (or a shared link) finds the run
OWNER_TOKEN = "owner_token"  # this session's secret owner token (secrets.token_urlsafe): it owns the runs it started
OWNER_COOKIE = "fedmnist_owner"  # the browser cookie that carries OWNER_TOKEN across a reload (never the URL)
TRAINED_MODEL = "trained_model"  # {"model", "meta"}: what the Draw and Encrypted Test pages run
TRAINED_MODEL_JOB = "trained_model_job"  # the job whose model TRAINED_MODEL holds
ROUND_VIEWS = "round_views"  # the Train page's figures of the latest round, built once per round
HE_KEY_ID = "he_key_id"  # this session's id in the server's HE key cache (ui.encrypted_common.he_key_cache)
HE_KEYS_MADE = "he_keys_made"  # True once this session had keys: if the cache lost them, they were released
DRAW_RESULT = "draw_result"  # (PreparedDigit, DigitResult) of the last classified drawing
DRAW_PREPARED = "draw_prepared"  # (sha256 of the canvas PNG, PreparedDigit or refusal message): one decode each
CANVAS_VERSION = "canvas_version"  # bumped to swap in an empty canvas
ENCRYPTED_EVAL = "encrypted_eval"  # the last EvalResult of the Encrypted Test page
FINISHED_RUNS = "finished_runs"  # {job id: one summary line} of this session's finished runs, to compare their cost
ATTACKS = "attacks"  # [(settings, StagedUpdate or MaliciousRound, AttackResult)] of the What leaks page, latest last
