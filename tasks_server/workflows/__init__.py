"""Workflows: a run is a graph of HTTP steps, each step an ordinary task of this server.

``model`` holds the domain values, ``graph`` checks a definition (ids, dependencies,
cycles, references) and ``template`` renders a step's request from the run's input and
earlier steps' results. All three are pure; the store advances runs in the same
transaction that records a step's outcome.
"""
