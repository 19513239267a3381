"""Answer verifiers per task type, rule checks and sandboxed runners, in killable children."""
