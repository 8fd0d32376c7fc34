"""Vocabularies of the `text-styles` tasks: labels, the text embedded for each label name,
key phrases per label, sentence templates and generic fillers.

A template holds ``{key}`` (a key phrase of the sentence's label) and generic slots filled from
``fillers``. Key phrases deliberately avoid the label name itself, so a zero-shot model must
relate them to the label's meaning.

Example:
    >>> from mergezoo.eval.benchmarks.text_styles.vocab import TASKS
    >>> TASKS["sentiment"].labels
    ('positive', 'negative')
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    """One classification task: ``keys[i]`` are the key phrases of ``labels[i]``, and
    ``label_texts[i]`` is the text whose base-model embedding is the class prototype."""

    labels: tuple[str, ...]
    label_texts: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    fillers: dict[str, list[str]] = field(default_factory=dict)


_PEOPLE = ["my neighbour", "the teacher", "our manager", "a friend of mine", "my uncle",
           "the students", "everyone at work", "my sister", "the old man", "a journalist",
           "my roommate", "the new intern", "grandma", "the bus driver", "our guide",
           "the whole family", "my colleague", "a stranger", "the kids", "my cousin"]
_TIMES = ["yesterday", "this morning", "last week", "on monday", "tonight", "every day",
          "after lunch", "during the trip", "last night", "at the weekend", "in the evening",
          "earlier today", "on friday", "all afternoon", "before dinner", "this year"]
_PLACES = ["at the office", "on the train", "in the kitchen", "at school", "downtown",
           "at the cafe", "in the park", "at home", "on the radio", "online"]

TOPIC = TaskSpec(
    labels=("sports", "politics", "science", "food"),
    label_texts=("sports", "politics", "science", "food"),
    keys=(
        ("the football match", "the final score", "the tennis tournament", "a marathon runner",
         "the basketball playoffs", "the coach's tactics", "a new swimming record",
         "the cycling race", "the goalkeeper", "the league table", "the olympic team",
         "a boxing match", "the striker's injury", "the home team's win", "the world cup"),
        ("the election", "the new tax law", "the senate vote", "the prime minister",
         "a parliamentary debate", "the campaign rally", "the foreign minister's visit",
         "the voting results", "the opposition party", "a government scandal",
         "the new immigration policy", "the mayor's speech", "the referendum",
         "the coalition talks", "the president's veto"),
        ("a new telescope image", "the chemistry experiment", "a study on dna",
         "the physics lecture", "a lab result", "the theory of relativity", "a fossil discovery",
         "the mars rover", "a vaccine trial", "quantum particles", "the research paper",
         "a black hole", "the periodic table", "gene editing", "the microscope slides"),
        ("the pasta recipe", "a spicy curry", "the chocolate cake", "fresh bread",
         "the new sushi place", "a bowl of soup", "grilled vegetables", "the cheese platter",
         "a pancake breakfast", "the roast chicken", "homemade pizza", "the fruit salad",
         "a garlic sauce", "the barbecue ribs", "a lemon tart"),
    ),
    templates=(
        "{person} talked about {key} {time}.", "i read an article on {key} {time}.",
        "{time} {person} could not stop thinking about {key}.",
        "the news about {key} surprised {person}.", "{person} asked me about {key} {place}.",
        "there was a long discussion of {key} {place} {time}.",
        "{person} wrote a blog post about {key}.", "have you heard about {key}?",
        "{place} everyone was talking about {key}.", "{person} showed me a video of {key}.",
        "my favourite podcast covered {key} {time}.", "{key} was all {person} cared about.",
        "{person} and i argued about {key} {place}.", "the report on {key} came out {time}.",
    ),
    fillers={"person": _PEOPLE, "time": _TIMES, "place": _PLACES},
)

SENTIMENT = TaskSpec(
    labels=("positive", "negative"),
    label_texts=("positive, good, happy", "negative, bad, unhappy"),
    keys=(
        ("wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "brilliant",
         "a real pleasure", "better than expected", "worth every penny", "outstanding",
         "charming", "impressive", "a joy", "perfect"),
        ("awful", "terrible", "disappointing", "a waste of money", "horrible", "dreadful",
         "boring", "worse than expected", "a complete mess", "unbearable", "mediocre",
         "annoying", "pathetic", "a letdown", "broken"),
    ),
    templates=(
        "{person} said the {thing} was {key}.", "honestly the {thing} was {key}.",
        "the {thing} {time} was {key}.", "i found the {thing} {key}.",
        "{person} thinks the {thing} is {key}.", "in my opinion the {thing} was {key}.",
        "the {thing} {place} turned out {key}.", "what a {thing} , simply {key}.",
        "after trying the {thing} {time} i would call it {key}.",
        "{person} told everyone the {thing} was {key}.", "overall the {thing} felt {key}.",
        "the review says the {thing} is {key}.",
    ),
    fillers={"person": _PEOPLE, "time": _TIMES, "place": _PLACES,
             "thing": ["movie", "hotel", "service", "meal", "concert", "book", "phone",
                       "hotel room", "flight", "lecture", "game", "new album", "haircut",
                       "museum tour", "delivery", "software update"]},
)

INTENT = TaskSpec(
    labels=("alarm", "weather", "music", "restaurant"),
    label_texts=("set an alarm", "weather forecast", "play music", "book a restaurant table"),
    keys=(
        ("wake me up at seven", "set an alarm for six am", "ring at half past five",
         "make sure i get up at eight", "buzz me at noon", "set my wake up call",
         "an alarm for tomorrow morning", "wake me in twenty minutes", "schedule a wake up bell",
         "get me out of bed at nine", "add an alarm at dawn", "ring loudly at seven thirty"),
        ("will it rain", "how cold will it be", "is it going to be sunny",
         "what is the temperature outside", "do i need an umbrella", "will there be snow",
         "how windy is it", "is a storm coming", "what is the forecast", "will it be hot",
         "how humid will it get", "any chance of thunder"),
        ("put on some jazz", "play my favourite song", "start the rock playlist",
         "i want to hear some beats", "turn on the radio hits", "play something by the beatles",
         "shuffle my songs", "queue the next track", "play relaxing piano tunes",
         "start the album from the beginning", "put on a dance mix", "play some classical pieces"),
        ("reserve a table for two", "book dinner at the italian place",
         "get us a table for four", "make a reservation for lunch", "find a free table downtown",
         "book a spot at the sushi bar", "reserve seats for the family dinner",
         "can we eat at the steakhouse", "hold a table by the window", "book a brunch table",
         "reserve the bistro for six", "get a dinner booking"),
    ),
    templates=(
        "{polite} {key} {time}.", "hey assistant , {key} {time}.", "i need you to {key}.",
        "{polite} {key}?", "quick question : {key} {time}?", "{key} , {polite}.",
        "assistant , {key} for {person}.", "okay {key} {place}.", "{time} {key} please.",
        "could you {key} for me {time}?", "{person} wants me to {key}.",
        "remember to {key} {time}.",
    ),
    fillers={"polite": ["please", "could you", "would you kindly", "can you", "i would like to",
                        "go ahead and", "just", "if possible"],
             "person": _PEOPLE, "time": _TIMES, "place": _PLACES},
)

EMOTION = TaskSpec(
    labels=("joy", "anger", "fear", "sadness"),
    label_texts=("joy", "anger", "fear", "sadness"),
    keys=(
        ("overjoyed", "delighted", "thrilled", "cheerful", "on top of the world", "ecstatic",
         "full of glee", "grinning from ear to ear", "elated", "jumping with excitement",
         "glowing with happiness", "beaming"),
        ("furious", "outraged", "livid", "fuming", "seething", "ready to scream at someone",
         "red in the face with rage", "irritated beyond words", "mad as hell", "enraged",
         "slamming doors", "boiling with fury"),
        ("terrified", "scared stiff", "frightened", "trembling with dread", "panicking",
         "afraid to move", "shaking like a leaf", "petrified", "nervous and jumpy",
         "haunted by nightmares", "too scared to sleep", "horrified"),
        ("heartbroken", "miserable", "gloomy", "in tears", "depressed", "crying quietly",
         "down in the dumps", "grieving", "lonely and blue", "sobbing", "devastated",
         "feeling empty inside"),
    ),
    templates=(
        "{person} felt {key} when {event}.", "{time} i was {key} because {event}.",
        "{person} has been {key} since {event}.", "when {event} , {person} was {key}.",
        "{place} {person} looked {key}.", "honestly i am {key} {time}.",
        "{person} seemed {key} after {event}.", "we were all {key} {place} {time}.",
        "i could tell {person} was {key}.", "{person} stayed {key} the whole day.",
        "everyone was {key} {time} when {event}.",
    ),
    fillers={"person": _PEOPLE, "time": _TIMES, "place": _PLACES,
             "event": ["the letter arrived", "the phone rang", "the results came out",
                       "the lights went out", "we got home", "the dog ran off",
                       "the news broke", "the door opened", "the plan changed",
                       "the guests left", "the car stopped", "the email came"]},
)

#: Task name -> specification, in grid order.
TASKS: dict[str, TaskSpec] = {
    "topic": TOPIC,
    "sentiment": SENTIMENT,
    "intent": INTENT,
    "emotion": EMOTION,
}
