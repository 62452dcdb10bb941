"""CI: the unattended loop around plan and apply.

`mlinfra ci plan` (pull requests) finds what changed between the merge base and HEAD
with Git, plans, and writes a Markdown report: the changed files and the resources they
touch, the plan, the runs it would start, each promotion's verdict in advance and the
data expectations' results; in GitHub Actions it keeps ONE comment per pull request and
stack up to date. `mlinfra ci run` (pushes) applies, and reports the runs, each
promotion decision (champion against candidate, with bootstrap intervals of the
differences) and rollouts; a commit it processed is not processed again.

One concept per module: `changes` (Git), `report` (Markdown), `github` (the REST
client), `bootstrap` (intervals), `history` (decisions read back), `plan` and `run`
(the two commands' flows).
"""
