"""`fdhclean refine`: the cleaning stage of refine-spec sections 3-6 as a chain of small steps.

read shard -> decode the members the vote needs -> estimate (or look up predictions) ->
score + vote (pure, `fdhclean.vote`) -> write shard + report rows. The shard is the unit of
work, output and resume (`runner`), the manifest is written once every shard is complete
(`finalize`).
"""
