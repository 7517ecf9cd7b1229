"""The built-in facts: a few hundred `(subject, answer)` pairs per relation, plain data.

Each `Relation` asks one kind of short factual question ("What is the capital of Kenya?").
Its wrong options come from the answers of the same relation (other capitals), except for
plurals, whose wrong options are regular-looking forms of the same word (`mouses`, `mousen`):
other words' plurals would give the answer away by spelling alone.

`RELATIONS` holds the relations the synthetic task asks about: the ones SmolLM2-135M-Instruct
answers clearly above chance zero-shot (`MEASURED`, from `scripts/measure_relations.py`);
`ALL_RELATIONS` also holds the ones left out, so the measurement can be rerun on another
teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Relation:
    """One relation: `template` has one `{}` for the subject; `facts` are `(subject, answer)`;
    `wrong_forms(subject, answer)` gives candidate wrong options when the relation's other
    answers would make poor ones (None: draw from the other answers)."""

    name: str
    template: str
    facts: tuple[tuple[str, str], ...]
    wrong_forms: Callable[[str, str], list[str]] | None = field(default=None, compare=False)

    def question(self, subject: str) -> str:
        return self.template.format(subject)

    def answers(self) -> list[str]:
        """The distinct answers, in table order (the pool of wrong options)."""
        return list(dict.fromkeys(answer for _, answer in self.facts))


# Country, capital, continent (None: left out of that relation, e.g. a contested capital or a
# country on two continents).
_COUNTRIES: tuple[tuple[str, str | None, str | None], ...] = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("the United Kingdom", "London", "Europe"),
    ("Ireland", "Dublin", "Europe"), ("the Netherlands", "Amsterdam", "Europe"), ("Belgium", "Brussels", "Europe"),
    ("Austria", "Vienna", "Europe"), ("Switzerland", "Bern", "Europe"), ("Poland", "Warsaw", "Europe"),
    ("Sweden", "Stockholm", "Europe"), ("Norway", "Oslo", "Europe"), ("Denmark", "Copenhagen", "Europe"),
    ("Finland", "Helsinki", "Europe"), ("Greece", "Athens", "Europe"), ("Hungary", "Budapest", "Europe"),
    ("the Czech Republic", "Prague", "Europe"), ("Romania", "Bucharest", "Europe"), ("Ukraine", "Kyiv", "Europe"),
    ("Bulgaria", "Sofia", "Europe"), ("Serbia", "Belgrade", "Europe"), ("Croatia", "Zagreb", "Europe"),
    ("Iceland", "Reykjavik", "Europe"), ("Slovakia", "Bratislava", "Europe"), ("Lithuania", "Vilnius", "Europe"),
    ("Latvia", "Riga", "Europe"), ("Estonia", "Tallinn", "Europe"), ("Russia", "Moscow", None),
    ("Turkey", "Ankara", None),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("India", "New Delhi", "Asia"),
    ("South Korea", "Seoul", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("Indonesia", "Jakarta", "Asia"), ("the Philippines", "Manila", "Asia"), ("Malaysia", "Kuala Lumpur", "Asia"),
    ("Pakistan", "Islamabad", "Asia"), ("Bangladesh", "Dhaka", "Asia"), ("Nepal", "Kathmandu", "Asia"),
    ("Iran", "Tehran", "Asia"), ("Iraq", "Baghdad", "Asia"), ("Saudi Arabia", "Riyadh", "Asia"),
    ("Syria", "Damascus", "Asia"), ("Afghanistan", "Kabul", "Asia"), ("Mongolia", "Ulaanbaatar", "Asia"),
    ("Jordan", "Amman", "Asia"), ("Lebanon", "Beirut", "Asia"), ("Qatar", "Doha", "Asia"),
    ("Sri Lanka", None, "Asia"), ("Israel", None, "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"), ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"),
    ("Algeria", "Algiers", "Africa"), ("Tunisia", "Tunis", "Africa"), ("Senegal", "Dakar", "Africa"),
    ("Uganda", "Kampala", "Africa"), ("Zimbabwe", "Harare", "Africa"), ("Angola", "Luanda", "Africa"),
    ("Sudan", "Khartoum", "Africa"), ("Mali", "Bamako", "Africa"), ("Zambia", "Lusaka", "Africa"),
    ("Somalia", "Mogadishu", "Africa"), ("South Africa", None, "Africa"), ("Tanzania", None, "Africa"),
    ("Canada", "Ottawa", "North America"), ("the United States", "Washington, D.C.", "North America"),
    ("Mexico", "Mexico City", "North America"), ("Cuba", "Havana", "North America"),
    ("Jamaica", "Kingston", "North America"), ("Guatemala", "Guatemala City", "North America"),
    ("Honduras", "Tegucigalpa", "North America"), ("Nicaragua", "Managua", "North America"),
    ("Costa Rica", "San Jose", "North America"), ("Panama", "Panama City", "North America"),
    ("Haiti", "Port-au-Prince", "North America"),
    ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"), ("Peru", "Lima", "South America"),
    ("Colombia", "Bogota", "South America"), ("Venezuela", "Caracas", "South America"),
    ("Ecuador", "Quito", "South America"), ("Uruguay", "Montevideo", "South America"),
    ("Paraguay", "Asuncion", "South America"), ("Bolivia", None, "South America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"), ("Fiji", "Suva", "Oceania"),
    ("Papua New Guinea", "Port Moresby", "Oceania"), ("Samoa", "Apia", "Oceania"),
)

CAPITALS = Relation("capital", "What is the capital of {}?",
                    tuple((country, capital) for country, capital, _ in _COUNTRIES if capital))
CONTINENTS = Relation("continent", "On which continent is {}?",
                      tuple((country, continent) for country, _, continent in _COUNTRIES if continent))


def _animals(kind: str, names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, kind) for name in names.split())


ANIMAL_CLASSES = Relation("animal class", "What kind of animal is the {}?", (
    *_animals("mammal", "dog cat horse cow whale dolphin bat elephant lion tiger mouse rabbit bear monkey "
                        "giraffe kangaroo pig sheep goat deer wolf fox squirrel"),
    *_animals("bird", "eagle sparrow penguin ostrich owl parrot crow duck pigeon swan robin hawk flamingo chicken"),
    *_animals("fish", "salmon trout shark tuna cod goldfish carp herring sardine catfish"),
    *_animals("reptile", "snake lizard crocodile turtle alligator iguana cobra python gecko chameleon"),
    *_animals("insect", "ant bee butterfly mosquito beetle grasshopper fly wasp moth cockroach ladybug dragonfly"),
))


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """`"a:b c:d"` -> `(("a", "b"), ("c", "d"))`; `_` stands for a space."""
    return tuple(tuple(part.replace("_", " ") for part in pair.split(":")) for pair in text.split())  # type: ignore[misc]


ELEMENTS = Relation("element symbol", "Which chemical element has the symbol {}?", _pairs(
    "H:hydrogen He:helium Li:lithium Be:beryllium B:boron C:carbon N:nitrogen O:oxygen F:fluorine Ne:neon "
    "Na:sodium Mg:magnesium Al:aluminium Si:silicon P:phosphorus S:sulfur Cl:chlorine Ar:argon K:potassium "
    "Ca:calcium Ti:titanium Cr:chromium Mn:manganese Fe:iron Co:cobalt Ni:nickel Cu:copper Zn:zinc Ga:gallium "
    "Ge:germanium As:arsenic Se:selenium Br:bromine Kr:krypton Rb:rubidium Sr:strontium Zr:zirconium "
    "Mo:molybdenum Ag:silver Cd:cadmium Sn:tin Sb:antimony I:iodine Xe:xenon Cs:caesium Ba:barium W:tungsten "
    "Pt:platinum Au:gold Hg:mercury Pb:lead Bi:bismuth Rn:radon Ra:radium U:uranium Pu:plutonium"))

# Each pair once, in one direction, so no held-out fact is a training fact read backwards.
OPPOSITES = Relation("opposite", "What is the opposite of {}?", _pairs(
    "hot:cold big:small up:down fast:slow happy:sad open:closed full:empty rich:poor strong:weak "
    "young:old early:late hard:soft wet:dry high:low long:short thick:thin loud:quiet clean:dirty good:bad "
    "true:false alive:dead push:pull win:lose buy:sell day:night black:white north:south east:west "
    "inside:outside above:below before:after love:hate friend:enemy question:answer cheap:expensive "
    "easy:difficult safe:dangerous deep:shallow wide:narrow rough:smooth asleep:awake arrive:leave "
    "entrance:exit first:last laugh:cry sharp:blunt brave:cowardly polite:rude increase:decrease "
    "maximum:minimum victory:defeat ancient:modern public:private major:minor positive:negative "
    "visible:invisible heavy:light"))

COLOURS = Relation("colour", "What colour is {}?", _pairs(
    "the_sky:blue grass:green a_ripe_banana:yellow fresh_snow:white coal:black blood:red a_lemon:yellow "
    "a_ripe_strawberry:red a_carrot:orange a_ripe_tomato:red milk:white milk_chocolate:brown a_crow:black "
    "a_lime:green a_pumpkin:orange a_ripe_cherry:red an_emerald:green a_ruby:red a_sapphire:blue "
    "a_frog:green a_flamingo:pink table_salt:white coffee:brown charcoal:black a_fire_truck:red "
    "a_school_bus:yellow a_polar_bear:white broccoli:green an_eggplant:purple lavender:purple corn:yellow "
    "a_cucumber:green soil:brown a_blueberry:blue a_raspberry:red cotton:white tar:black a_chestnut:brown "
    "a_pea:green a_canary:yellow mustard:yellow a_violet:purple the_ocean:blue a_tangerine:orange"))

LANGUAGES = Relation("language", "What language do most people speak in {}?", _pairs(
    "France:French Germany:German Spain:Spanish Italy:Italian Portugal:Portuguese Brazil:Portuguese "
    "Mexico:Spanish Japan:Japanese China:Chinese Russia:Russian Greece:Greek the_Netherlands:Dutch "
    "Sweden:Swedish Poland:Polish Turkey:Turkish Egypt:Arabic Saudi_Arabia:Arabic Iran:Persian "
    "Thailand:Thai Vietnam:Vietnamese South_Korea:Korean Finland:Finnish Hungary:Hungarian Norway:Norwegian "
    "Denmark:Danish Argentina:Spanish Israel:Hebrew Indonesia:Indonesian the_Czech_Republic:Czech "
    "Ukraine:Ukrainian Romania:Romanian Austria:German Chile:Spanish Peru:Spanish Colombia:Spanish "
    "Australia:English the_United_States:English the_United_Kingdom:English New_Zealand:English "
    "Iceland:Icelandic"))


def _plural_forms(word: str, plural: str) -> list[str]:
    """Regular-looking plurals of `word` that are wrong (the right one is left out)."""
    forms = [word + "s", word + "es", word + "en", word + "ren", word + "i", word[:-1] + "ies", word[:-1] + "ves",
             word[:-2] + "i", word[:-2] + "a", word + "ses"]
    return [form for form in dict.fromkeys(forms) if form not in (plural, word) and len(form) > 2]


PLURALS = Relation("plural", "What is the plural of {}?", _pairs(
    "mouse:mice child:children man:men woman:women foot:feet tooth:teeth goose:geese person:people ox:oxen "
    "cactus:cacti fungus:fungi analysis:analyses crisis:crises leaf:leaves knife:knives wife:wives wolf:wolves "
    "half:halves city:cities baby:babies box:boxes bus:buses church:churches dish:dishes fox:foxes "
    "potato:potatoes tomato:tomatoes hero:heroes sheep:sheep deer:deer moose:moose louse:lice "
    "phenomenon:phenomena criterion:criteria medium:media thesis:theses nucleus:nuclei radius:radii "
    "stimulus:stimuli alumnus:alumni bacterium:bacteria calf:calves loaf:loaves shelf:shelves thief:thieves "
    "life:lives party:parties story:stories glass:glasses kiss:kisses watch:watches wish:wishes quiz:quizzes"),
    wrong_forms=_plural_forms)

ALL_RELATIONS: tuple[Relation, ...] = (CAPITALS, CONTINENTS, ANIMAL_CLASSES, ELEMENTS, OPPOSITES, COLOURS,
                                       LANGUAGES, PLURALS)
MEASURED = {  # SmolLM2-135M-Instruct, every fact asked once: (n, accuracy, 95 % Wilson interval, chance)
    "capital": (93, 0.903, (0.826, 0.948), 0.258), "continent": (96, 0.562, (0.463, 0.657), 0.250),
    "animal class": (69, 0.449, (0.338, 0.566), 0.261), "element symbol": (56, 0.571, (0.441, 0.692), 0.250),
    "opposite": (57, 0.825, (0.706, 0.902), 0.263), "colour": (44, 0.477, (0.338, 0.621), 0.250),
    "language": (40, 1.000, (0.912, 1.000), 0.250), "plural": (53, 1.000, (0.932, 1.000), 0.264),
}
"""What `scripts/measure_relations.py` printed for the reference teacher (plain data, for the record)."""

RELATIONS: tuple[Relation, ...] = (CAPITALS, CONTINENTS, ELEMENTS, OPPOSITES, LANGUAGES, PLURALS)
"""The relations the synthetic task asks about: those the teacher gets right at least half the
time (and so, with these n, clearly above chance: every lower end is above 0.44). Animal classes
(0.449) and colours (0.477) are above chance too but weakly; questions the teacher mostly gets
wrong add noise to the retention ratio and little signal."""
