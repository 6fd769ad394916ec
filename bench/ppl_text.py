"""A fixed English text for perplexity checks (written for this project; about 1,000 SmolLM2 tokens)."""

TEXT = """\
The first lighthouses were not towers at all but fires kept burning on hilltops near a harbour, so that
sailors coming home after dark could tell the safe channel from the rocks. Later, people built stone
towers to lift the fire higher, because a light that stands higher can be seen from farther away. The
curve of the earth hides a low light long before a high one, and every few metres of height add
kilometres to the distance at which a ship can first catch sight of it.

For centuries the light itself remained weak. Wood and coal burned unevenly, smoke blackened the glass,
and the keepers spent their nights climbing stairs with baskets of fuel. Oil lamps were an improvement,
and a lamp with a hollow wick, which drew air through the middle of the flame, burned brighter and
cleaner still. Even so, most of the light escaped upwards into the sky or downwards onto the rocks,
where it was of no use to anyone at sea.

The great change came with the lens. A French engineer noticed that a very thick lens, of the kind
needed to gather light from a lamp, would be far too heavy to make and would crack as it cooled. His
answer was to cut the lens into rings. Each ring kept only the curved surface that bent the light, and
the useless glass behind it was removed. The result was a lens that was thin and light enough to build,
yet bent almost all of the lamp's light into a narrow beam aimed at the horizon. A single lamp behind
such a lens could be seen more than thirty kilometres away.

Once the beam was narrow, it could also be made to speak. By turning the lens slowly on a bed of
mercury, the keepers made the beam sweep around the horizon, so that a ship saw a flash each time it
passed. Different lighthouses were given different patterns: one flash every five seconds, two flashes
close together, a long flash followed by darkness. A navigator who counted the flashes and checked them
against a printed list could tell which lighthouse he was looking at, and therefore where he was.

Life in a lighthouse was quiet and strict. The keepers wound the clockwork that turned the lens every
few hours, trimmed the wicks, polished the brass and cleaned the glass of salt and soot. They wrote the
weather in a logbook: the wind, the state of the sea, the ships that passed and the times the light was
lit and put out. On remote rocks, supplies came by boat once a month, and in bad weather the boat did
not come at all. Keepers learned to bake bread, mend their own clothes and play long games of chess
with the same two or three companions.

In the twentieth century electricity replaced the oil lamp, and automatic switches replaced the
keepers. A light sensor turns the lamp on at dusk and off at dawn, a spare bulb swings into place when
the first one fails, and a radio message warns the coast guard if anything goes wrong. Satellite
navigation now tells a ship its position to within a few metres, and many captains rarely look at a
lighthouse at all.

Yet the towers have not disappeared. Electronics can fail, and a light that anyone can see with their
own eyes remains the simplest way to warn of a dangerous reef. Many of the old towers have become
museums, where visitors climb the spiral stairs, look through the great lens and read the logbooks in
which the keepers recorded storms, shipwrecks and long, uneventful nights. Standing at the top on a
windy evening, it is easy to understand why people once thought of the lighthouse as a promise: that
someone was awake, and that the way home could still be found.

A lighthouse also tells us something about how knowledge grows. None of the people who improved it set
out to solve the whole problem at once. One person found a better wick, another a cleaner fuel, a third
a way to shape the glass, and a fourth a way to make the beam turn. Each step was small enough to test
on a single tower, and each one made the next step possible. The keepers, too, contributed: their
careful records showed which lamps failed in the cold, which glass cracked in the heat, and which
patterns of flashes sailors confused with one another at a distance.
"""
