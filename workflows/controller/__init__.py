"""The StateFlow controller's parts; ``workflows.investigation`` puts them together (``Investigation``).

One module per state, each with ``async def handle(run: RunContext) -> Step``; where a state's tools are called by a
tool-calling LLM or by the controller (prose-only and scripted backends), the two ways are two functions side by side:

    plan.py       PLAN       parse and validate the request; a tool-calling Planner may refine the plan
    capture.py    CAPTURE    profile the plan's layers over its corpus
    analyze.py    ANALYZE    statistics, polysemantic detection, logit effects; the Analyst's narrative
    visualize.py  VISUALIZE  figures and the neuron dashboard
    critique.py   CRITIQUE   the findings check and the Critic's verdict (REVISE or REPORT)
    revise.py     REVISE     back to ANALYZE with the Critic's feedback
    report.py     REPORT     the last check of the narrative, report.md and report.html (also a partial report)

and what they share:

    context.py    RunContext (the run's wiring and helpers every state uses), Step, the failures a state raises
    run_state.py  RunState: what the controller knows about the run, saved to ``state.json`` in the run folder
    options.py    RequestOptions, RunOptions, RunResult and the exit codes (public through workflows.investigation)
"""
