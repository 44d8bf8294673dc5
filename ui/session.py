"""What one browser session keeps: every st.session_state key, and the URL parameter, named once."""

JOB = "job"  # this session's TrainingJob
RUN_PARAM = "run"  # URL query parameter with the run's id, so a reload finds the run again
TRAINED_MODEL = "trained_model"  # {"model", "meta"}: what the Draw and Encrypted Test pages run
TRAINED_MODEL_JOB = "trained_model_job"  # the job whose model TRAINED_MODEL holds
ROUND_VIEWS = "round_views"  # the Train page's figures of the latest round, built once per round
HE_CLIENT = "he_client"  # the user's CKKS keys
HE_SERVER = "he_server"  # (model, HeServer): the server side for those keys and that model
DRAW_RESULT = "draw_result"  # (PreparedDigit, DigitResult) of the last classified drawing
CANVAS_VERSION = "canvas_version"  # bumped to swap in an empty canvas
ENCRYPTED_EVAL = "encrypted_eval"  # the last EvalResult of the Encrypted Test page
FINISHED_RUNS = "finished_runs"  # {job id: one summary line} of this session's finished runs, to compare their cost
