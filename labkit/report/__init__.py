"""Results → comparison: one pipeline for `labkit compare`, `labkit sweep` and notebook 06.

    results = load_results()                   # selection: every result.json, any status
    chosen = select_runs(results, profile)     # selection: kept runs, each left-out run with its reason
    runs = runs_frame(chosen.kept)             # frames: one row per run
    comparison_table(runs), scaling_frame(runs)                # frames
    verdicts(table), disagreement_lines(runs)                  # sentences: within one setup only
    report_text(chosen, ...), describe(result)                 # sentences

selection.py, frames.py and sentences.py are those three steps; costmodel.py is the
alpha–beta model (maths on result files and the microbenchmark's fits); regime.py the why
of a ranking in numbers (oversubscription, α and β, predictions for other links); plots.py draws
the frames; diagrams.py draws a method's communication pattern; distance.py measures how
far two runs' parameters ended. Nothing here imports torch at import time.
"""
