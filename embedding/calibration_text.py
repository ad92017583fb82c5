"""A small built-in calibration set for the precision choice: passages on unrelated subjects, cut into
overlapping windows of 1 to 6 sentences (so lengths run from ~15 to ~200 tokens and neighbours are
meaningful), and questions about them as the query set. Callers with their own corpus pass chunks of it
instead."""

from __future__ import annotations

import re

PASSAGES = (
    "PostgreSQL stores each table as a heap of pages of eight kilobytes. An index is a separate structure that "
    "maps keys to the positions of rows in that heap. When a row is updated, a new version is written and the "
    "old one stays until vacuum removes it. This is how readers never block writers. Long transactions keep old "
    "versions alive, so tables bloat when a session stays idle in a transaction for hours. Autovacuum runs in the "
    "background and decides from the number of dead rows when a table needs cleaning.",
    "Sourdough bread rises with a culture of wild yeast and lactic acid bacteria. The starter is fed flour and "
    "water every day and kept at room temperature. A young starter smells of yoghurt; an old one turns sharp and "
    "vinegary. Bakers mix the dough, let it rest so the flour absorbs the water, then fold it every half hour. "
    "A long cold proof in the refrigerator develops flavour and makes the loaf easier to score. The oven should "
    "be as hot as it goes, with steam for the first twenty minutes so the crust stays soft while the loaf expands.",
    "The mitochondrion produces most of the energy a cell uses. It has its own small circular genome, inherited "
    "from the mother in most animals. Inside, the electron transport chain pumps protons across the inner "
    "membrane. The protons flow back through ATP synthase, which turns like a rotor and makes ATP. Cells with high "
    "energy demands, such as heart muscle and neurons, contain thousands of mitochondria. Defects in these genes "
    "cause rare diseases that often affect muscles and the brain.",
    "A tenancy agreement sets out the rent, the deposit and the length of the lease. In many countries the "
    "deposit must be held in a protected scheme and returned within a fixed number of days after the tenant "
    "leaves. The landlord may deduct the cost of damage beyond normal wear and tear. Disputes go to an "
    "adjudicator, which is cheaper than court. A tenant who wants to leave early usually has to find a "
    "replacement or pay the rent until the end of the term, unless there is a break clause.",
    "The offside rule in football stops attackers from waiting next to the goal. A player is offside if, when "
    "the ball is played to them, they are nearer to the opponents' goal line than both the ball and the second "
    "last defender. Being level counts as onside. There is no offence from a goal kick, a throw-in or a corner. "
    "Video review now checks close decisions, drawing lines from the shoulder or the knee, which has made the "
    "rule stricter than many fans expected.",
    "Glaciers form where more snow falls in winter than melts in summer. Over decades the snow compacts into "
    "firn and then into dense blue ice. Under its own weight the ice flows downhill, a few metres to several "
    "kilometres a year. Moving ice plucks rock from the valley floor and grinds it into fine flour that turns "
    "meltwater rivers milky. When glaciers retreat they leave moraines, U-shaped valleys and lakes dammed by "
    "rubble. Most mountain glaciers have been shrinking since the middle of the nineteenth century.",
    "A compiler turns source code into machine instructions in several passes. The parser builds a syntax tree "
    "and the type checker rejects programs that misuse values. The tree is lowered into an intermediate "
    "representation where most optimisations happen: constant folding, inlining, dead code elimination and "
    "loop transformations. Register allocation then maps an unlimited set of virtual registers onto the few "
    "the processor has, spilling the rest to the stack. Finally the code generator emits instructions and the "
    "linker resolves symbols across object files.",
    "Jazz grew out of the music of New Orleans at the start of the twentieth century. Early bands mixed "
    "ragtime, blues and brass band marches, with several instruments improvising at once. In the swing era "
    "big bands played arranged music for dancing, and soloists stood up for a chorus or two. Bebop musicians "
    "in the nineteen forties played faster and with more complex harmony, music for listening rather than "
    "dancing. Later styles borrowed from modal scales, rock rhythms and free improvisation.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease. Some contain a "
    "weakened or inactivated virus; others carry only a protein from its surface, or messenger RNA that "
    "instructs cells to make that protein for a short time. The body responds by producing antibodies and "
    "memory cells. When the real pathogen arrives, the response is fast enough to prevent serious illness. "
    "Booster doses are given where immunity fades over the years.",
    "A double-entry ledger records every transaction twice, as a debit in one account and a credit in "
    "another. The totals of debits and credits must always agree, which catches many clerical errors. Assets "
    "and expenses increase with debits; liabilities, equity and income increase with credits. At the end of "
    "the period the income and expense accounts are closed into retained earnings. The balance sheet then "
    "shows what the business owns and owes on one date, and the income statement what it earned over the period.",
    "Bees communicate the location of flowers with a waggle dance on the vertical comb inside the hive. The "
    "angle of the run relative to straight up gives the direction of the food relative to the sun. The length "
    "of the waggle phase encodes the distance. Foragers that follow the dance fly out and search the indicated "
    "area, guided also by scent. A colony can shift its whole workforce to a rich new patch of flowers within "
    "an hour.",
    "Rate limiting protects an API from clients that send too many requests. A token bucket holds a number of "
    "tokens that refill at a steady rate; each request takes one and is refused when the bucket is empty. "
    "Servers answer refused requests with status 429 and often a Retry-After header that says how long to "
    "wait. Well-behaved clients back off exponentially with random jitter so that many clients do not retry "
    "at the same instant. A circuit breaker stops calling a service that keeps failing and tries again later.",
    "The Roman aqueducts carried water from springs in the hills to the cities on a gentle, continuous slope. "
    "Most of their length ran underground in covered channels; the famous arches were needed only to cross "
    "valleys. Engineers surveyed the route with simple instruments and kept the gradient to a fraction of a "
    "percent over tens of kilometres. In the city the water fed public fountains, baths and a few private "
    "houses whose owners paid for the privilege. Lead pipes distributed it, and deposits of lime lined them.",
    "Compound interest grows a sum by adding the interest earned to the principal, so that later interest "
    "is paid on earlier interest as well. At seven percent a year an amount roughly doubles in ten years. "
    "The same arithmetic works against borrowers: credit card balances at high rates grow quickly when only "
    "the minimum is paid. Inflation erodes the real value of savings, so the return that matters is the "
    "nominal rate minus inflation. Fees of one or two percent a year take a large share over decades.",
    "Octopuses have about five hundred million neurons, two thirds of them in their arms. Each arm can taste "
    "what it touches and react without waiting for the brain. Octopuses change colour and skin texture in a "
    "fraction of a second using pigment cells under nervous control, even though their eyes appear to be "
    "colour blind. They solve puzzles, open jars and escape from tanks in aquariums. Most species live only "
    "one or two years and die soon after breeding.",
    "Photovoltaic panels convert sunlight into direct current in silicon cells. An inverter turns that into "
    "alternating current for the house or the grid. Output depends on the angle of the panels, shading and "
    "temperature: hot cells are less efficient. A battery stores the midday surplus for the evening. "
    "Net metering lets owners sell excess power back to the utility, although many countries now pay less "
    "for exported electricity than for imported electricity, which favours using the power at home.",
)

QUERIES = (
    "why do postgres tables bloat",
    "how long should sourdough proof in the fridge",
    "how do mitochondria make ATP",
    "can my landlord keep the deposit for damage",
    "when is a football player offside",
    "why are glacial rivers milky",
    "what does register allocation do",
    "what made bebop different from swing",
    "how do mRNA vaccines work",
    "debits and credits in double-entry bookkeeping",
    "how do bees tell others where flowers are",
    "what should a client do after a 429 response",
    "how did roman aqueducts carry water",
    "how long does it take money to double at seven percent",
    "how intelligent are octopuses",
    "do solar panels work worse when hot",
    "what is autovacuum",
    "bread crust steam oven",
    "immune memory cells booster",
    "exponential backoff with jitter",
)


def calibration_texts(max_sentences: int = 6) -> list[str]:
    """Windows of 1..``max_sentences`` consecutive sentences of each passage, and pairs of passages (near the
    256-token window of small models); queries not included."""
    texts = [f"{a} {b}" for a, b in zip(PASSAGES, PASSAGES[1:] + PASSAGES[:1], strict=True)]
    for passage in PASSAGES:
        sentences = re.split(r"(?<=[.!?])\s+", passage)
        for size in range(1, max_sentences + 1, 2):
            for start in range(0, len(sentences) - size + 1, max(1, size // 2 + 1)):
                texts.append(" ".join(sentences[start : start + size]))
    return texts
