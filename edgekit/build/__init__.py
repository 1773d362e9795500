"""The build side: checkpoint -> quantize -> exits -> export/lower -> compile, and the runner
that strings the steps together. Imports torch only inside the steps that need it."""
