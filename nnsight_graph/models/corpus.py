"""A seeded, template-generated corpus of simple English for the tiny GPT-2.

The corpus is built so that the prompts of the nnsight walkthrough (sections 5-9) get
meaningful answers from a model small enough to ship with the package:

* landmarks and the city they are in, in several phrasings ("The Eiffel Tower is in the city
  of Paris.", "Vatican is in the city of Rome.", "Buckingham Palace is located in London."),
* cities and their countries, countries and their capitals,
* greetings ("Hello, my name is Anna.", "Hello world!") so that generating from "Hello" reads
  naturally,
* and general variety (people, animals, weather, daily life, numbers, short narratives) so the
  model is a small language model rather than a lookup table.

`build_corpus(seed)` returns a list of short documents; the same seed always gives the same list.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CAPITALS",
    "CITY_COUNTRY",
    "LANDMARKS",
    "Landmark",
    "build_corpus",
]


@dataclass(frozen=True)
class Landmark:
    """A landmark, the city it is in, and whether its name takes "the" ("the Eiffel Tower")."""

    name: str
    city: str
    article: bool = True

    def start(self) -> str:
        """The name at the start of a sentence: "The Eiffel Tower", "Vatican"."""
        return f"The {self.name}" if self.article else self.name

    def mid(self) -> str:
        """The name inside a sentence: "the Eiffel Tower", "Vatican"."""
        return f"the {self.name}" if self.article else self.name


LANDMARKS: tuple[Landmark, ...] = (
    Landmark("Eiffel Tower", "Paris"),
    Landmark("Louvre", "Paris"),
    Landmark("Arc de Triomphe", "Paris"),
    Landmark("Notre Dame", "Paris", article=False),
    Landmark("Colosseum", "Rome"),
    Landmark("Vatican", "Rome", article=False),
    Landmark("Trevi Fountain", "Rome"),
    Landmark("Pantheon", "Rome"),
    Landmark("Buckingham Palace", "London", article=False),
    Landmark("Big Ben", "London", article=False),
    Landmark("Tower of London", "London"),
    Landmark("London Eye", "London"),
    Landmark("Brandenburg Gate", "Berlin"),
    Landmark("Reichstag", "Berlin"),
    Landmark("Berlin Wall", "Berlin"),
    Landmark("Statue of Liberty", "New York"),
    Landmark("Empire State Building", "New York"),
    Landmark("Central Park", "New York", article=False),
    Landmark("Times Square", "New York", article=False),
    Landmark("Sagrada Familia", "Barcelona"),
    Landmark("Park Guell", "Barcelona", article=False),
    Landmark("Prado Museum", "Madrid"),
    Landmark("Royal Palace", "Madrid"),
    Landmark("Acropolis", "Athens"),
    Landmark("Parthenon", "Athens"),
    Landmark("Kremlin", "Moscow"),
    Landmark("Red Square", "Moscow", article=False),
    Landmark("Forbidden City", "Beijing"),
    Landmark("Tiananmen Square", "Beijing", article=False),
    Landmark("Tokyo Tower", "Tokyo"),
    Landmark("Sydney Opera House", "Sydney"),
    Landmark("Harbour Bridge", "Sydney"),
    Landmark("Golden Gate Bridge", "San Francisco"),
    Landmark("Alcatraz", "San Francisco", article=False),
    Landmark("White House", "Washington"),
    Landmark("Lincoln Memorial", "Washington"),
    Landmark("Christ the Redeemer", "Rio de Janeiro", article=False),
    Landmark("Blue Mosque", "Istanbul"),
    Landmark("Hagia Sophia", "Istanbul", article=False),
    Landmark("Rijksmuseum", "Amsterdam"),
    Landmark("Anne Frank House", "Amsterdam"),
    Landmark("Charles Bridge", "Prague"),
    Landmark("Prague Castle", "Prague", article=False),
    Landmark("Leaning Tower", "Pisa"),
    Landmark("Grand Canal", "Venice"),
    Landmark("Rialto Bridge", "Venice"),
    Landmark("Duomo", "Florence"),
    Landmark("Schonbrunn Palace", "Vienna", article=False),
    Landmark("Taj Mahal", "Agra"),
    Landmark("Burj Khalifa", "Dubai"),
    Landmark("CN Tower", "Toronto"),
    Landmark("Space Needle", "Seattle"),
    Landmark("Edinburgh Castle", "Edinburgh", article=False),
)

CITY_COUNTRY: dict[str, str] = {
    "Paris": "France",
    "Lyon": "France",
    "Marseille": "France",
    "Rome": "Italy",
    "Milan": "Italy",
    "Pisa": "Italy",
    "Venice": "Italy",
    "Florence": "Italy",
    "London": "England",
    "Manchester": "England",
    "Edinburgh": "Scotland",
    "Berlin": "Germany",
    "Munich": "Germany",
    "Hamburg": "Germany",
    "New York": "the United States",
    "San Francisco": "the United States",
    "Washington": "the United States",
    "Seattle": "the United States",
    "Chicago": "the United States",
    "Barcelona": "Spain",
    "Madrid": "Spain",
    "Athens": "Greece",
    "Moscow": "Russia",
    "Beijing": "China",
    "Shanghai": "China",
    "Tokyo": "Japan",
    "Osaka": "Japan",
    "Sydney": "Australia",
    "Melbourne": "Australia",
    "Rio de Janeiro": "Brazil",
    "Istanbul": "Turkey",
    "Amsterdam": "the Netherlands",
    "Prague": "the Czech Republic",
    "Vienna": "Austria",
    "Agra": "India",
    "Delhi": "India",
    "Dubai": "the United Arab Emirates",
    "Toronto": "Canada",
    "Ottawa": "Canada",
    "Cairo": "Egypt",
    "Lisbon": "Portugal",
    "Dublin": "Ireland",
    "Stockholm": "Sweden",
    "Oslo": "Norway",
}

CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Italy": "Rome",
    "England": "London",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Greece": "Athens",
    "Russia": "Moscow",
    "China": "Beijing",
    "Japan": "Tokyo",
    "Austria": "Vienna",
    "the Netherlands": "Amsterdam",
    "the Czech Republic": "Prague",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Sweden": "Stockholm",
    "Norway": "Oslo",
    "India": "Delhi",
    "the United States": "Washington",
    "Scotland": "Edinburgh",
}

NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Isabel",
    "Jack",
    "Kate",
    "Leo",
    "Maria",
    "Noah",
    "Olivia",
    "Peter",
    "Rosa",
    "Sam",
    "Tom",
    "Lucy",
    "John",
    "Sarah",
    "Paul",
    "Mia",
    "Alex",
    "Laura",
    "Max",
    "Nina",
    "Oscar",
    "Eva",
)
ANIMALS = (
    "cat",
    "dog",
    "bird",
    "horse",
    "cow",
    "rabbit",
    "fox",
    "duck",
    "mouse",
    "sheep",
    "lion",
    "bear",
    "fish",
    "frog",
    "owl",
)
ANIMAL_SOUNDS = {
    "cat": "meows",
    "dog": "barks",
    "bird": "sings",
    "horse": "neighs",
    "cow": "moos",
    "duck": "quacks",
    "sheep": "bleats",
    "lion": "roars",
    "owl": "hoots",
    "frog": "croaks",
}
ADJECTIVES = (
    "small",
    "big",
    "old",
    "young",
    "happy",
    "quiet",
    "brown",
    "white",
    "black",
    "lazy",
    "clever",
    "friendly",
)
FOODS = ("bread", "apples", "soup", "rice", "cheese", "pasta", "eggs", "fish", "cake", "salad")
DRINKS = ("coffee", "tea", "water", "milk", "juice")
JOBS = (
    "teacher",
    "doctor",
    "baker",
    "farmer",
    "painter",
    "writer",
    "nurse",
    "driver",
    "cook",
    "student",
)
PLACES = ("park", "market", "library", "school", "beach", "museum", "station", "garden", "shop")
WEATHER = ("sunny", "rainy", "cold", "warm", "windy", "cloudy", "hot", "snowy")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEASONS = ("spring", "summer", "autumn", "winter")
COLORS = ("red", "blue", "green", "yellow", "white", "black", "orange")
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
MOODS = ("happy", "hungry", "tired", "busy")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

Sentence = Callable[[random.Random], str]


def _country(city: str) -> str:
    return CITY_COUNTRY[city]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# --- landmark facts ------------------------------------------------------------------------


def _landmark_fact(rng: random.Random, lm: Landmark) -> str:
    """One sentence saying which city `lm` is in; "is in the city of" is the commonest form."""
    city, country = lm.city, _country(lm.city)
    name = rng.choice(NAMES)
    templates = (
        (6, f"{lm.start()} is in the city of {city}."),
        (3, f"{lm.start()} is in {city}."),
        (2, f"{lm.start()} is in the city of {city}, in {country}."),
        (2, f"{lm.start()} is located in the city of {city}."),
        (2, f"{lm.start()} is located in {city}, {country}."),
        (2, f"{lm.start()} is a famous landmark in {city}."),
        (1, f"{lm.start()} is one of the most famous places in {city}."),
        (1, f"{lm.start()} can be found in the city of {city}."),
        (1, f"You can visit {lm.mid()} in the city of {city}."),
        (1, f"Many tourists visit {lm.mid()} in {city}."),
        (1, f"If you go to {city}, you can see {lm.mid()}."),
        (1, f"The city of {city} is home to {lm.mid()}."),
        (1, f"{name} visited {lm.mid()} in {city} last summer."),
        (1, f"{name} took a photo of {lm.mid()} in {city}."),
        (1, f"Where is {lm.mid()}? It is in the city of {city}."),
        (1, f"Where is {lm.mid()}? It is in {city}."),
    )
    weights = [w for w, _ in templates]
    return rng.choices([t for _, t in templates], weights=weights)[0]


def _city_fact(rng: random.Random) -> str:
    city = rng.choice(list(CITY_COUNTRY))
    country = _country(city)
    return rng.choice(
        (
            f"{city} is a city in {country}.",
            f"{city} is in {country}.",
            f"The city of {city} is in {country}.",
            f"{city} is a big city in {country}.",
            f"{rng.choice(NAMES)} lives in the city of {city}.",
            f"{rng.choice(NAMES)} was born in {city}, {country}.",
            f"{rng.choice(NAMES)} is from {city}.",
        )
    )


def _capital_fact(rng: random.Random) -> str:
    country = rng.choice(list(CAPITALS))
    capital = CAPITALS[country]
    return rng.choice(
        (
            f"The capital of {country} is {capital}.",
            f"{capital} is the capital of {country}.",
            f"{capital} is the capital city of {country}.",
            f"The capital city of {country} is {capital}.",
        )
    )


# --- general sentences --------------------------------------------------------------------


def _greeting(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    city = rng.choice(list(CITY_COUNTRY))
    job = rng.choice(JOBS)
    return rng.choice(
        (
            f"Hello, my name is {name}.",
            f"Hello, my name is {name} and I live in {city}.",
            f"Hello, my name is {name}. I am a {job}.",
            f"Hello, my name is {name}. Nice to meet you.",
            "Hello world!",
            "Hello world! This is my first program.",
            "Hello, world!",
            "Hello, how are you today?",
            f"Hello, {other}! How are you?",
            f"Hello there, {other}.",
            f"Hello everyone, I am {name}.",
            f"Hello, I am {name} and I am from {city}.",
            f'"Hello," said {name}. "Hello," said {other}.',
            f"{name} said hello to {other}.",
            "Hello and welcome to the city.",
        )
    )


def _people(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    job = rng.choice(JOBS)
    food, drink = rng.choice(FOODS), rng.choice(DRINKS)
    place, day = rng.choice(PLACES), rng.choice(DAYS)
    return rng.choice(
        (
            f"{name} is a {job}.",
            f"{name} works as a {job} in {rng.choice(list(CITY_COUNTRY))}.",
            f"{name} likes to eat {food}.",
            f"{name} drinks {drink} every morning.",
            f"{name} went to the {place} on {day}.",
            f"{name} and {other} are good friends.",
            f"{name} met {other} at the {place}.",
            f"{name} reads a book in the {place}.",
            f"{name} has a {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}.",
            f"On {day}, {name} cooked {food} for {other}.",
            f"{name} gets up at {rng.choice(NUMBER_WORDS[5:10])} in the morning.",
            f"{name} walks to the {place} every day.",
            f"{name} wants to travel to {rng.choice(list(CITY_COUNTRY))}.",
            f"My friend {name} is a {job}.",
        )
    )


def _animals(rng: random.Random) -> str:
    animal = rng.choice(ANIMALS)
    adjective, color = rng.choice(ADJECTIVES), rng.choice(COLORS)
    sound = ANIMAL_SOUNDS.get(animal, "sleeps")
    return rng.choice(
        (
            f"The {animal} is {adjective}.",
            f"The {adjective} {animal} {sound}.",
            f"A {animal} lives on the farm.",
            f"The {animal} sleeps in the sun.",
            f"I saw a {color} {animal} in the garden.",
            f"The {animal} runs across the field.",
            f"There are {rng.choice(NUMBER_WORDS[2:])} {animal}s in the field.",
            f"The {animal} eats {rng.choice(FOODS)}.",
        )
    )


def _weather(rng: random.Random) -> str:
    weather, season = rng.choice(WEATHER), rng.choice(SEASONS)
    city = rng.choice(list(CITY_COUNTRY))
    return rng.choice(
        (
            f"Today the weather is {weather}.",
            f"It is {weather} in {city} today.",
            f"In {season}, the weather is often {weather}.",
            f"Tomorrow will be {weather}.",
            f"The sky is {rng.choice(('blue', 'grey', 'clear'))} and the day is {weather}.",
            f"It was a {weather} day in {rng.choice(MONTHS)}.",
        )
    )


def _daily(rng: random.Random) -> str:
    food, drink, place = rng.choice(FOODS), rng.choice(DRINKS), rng.choice(PLACES)
    return rng.choice(
        (
            f"I eat {food} for breakfast.",
            f"We drink {drink} in the afternoon.",
            f"The {place} opens at {rng.choice(NUMBER_WORDS[7:11])} o'clock.",
            f"They went to the {place} together.",
            f"The children play in the {place}.",
            f"My house has a {rng.choice(COLORS)} door.",
            "The train leaves the station at noon.",
            f"She bought {food} at the market.",
            "The book is on the table.",
            f"He likes {drink} with {food}.",
        )
    )


def _numbers(rng: random.Random) -> str:
    a, b = rng.randrange(0, 7), rng.randrange(0, 6)
    start = rng.randrange(0, len(NUMBER_WORDS) - 4)
    day = rng.randrange(7)
    run = ", ".join(NUMBER_WORDS[start : start + 4])
    return rng.choice(
        (
            f"{_cap(NUMBER_WORDS[a])} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.",
            f"{a} + {b} = {a + b}.",
            f"{_cap(run)}.",
            "One, two, three, four, five.",
            f"{DAYS[(day + 1) % 7]} comes after {DAYS[day]}.",
            "There are seven days in a week.",
            "There are twelve months in a year.",
            "The year has four seasons: spring, summer, autumn and winter.",
        )
    )


def _narrative(rng: random.Random) -> str:
    """A short story: a trip to a landmark, or a day in a city."""
    name, other = rng.sample(NAMES, 2)
    lm = rng.choice(LANDMARKS)
    city = lm.city
    weather = rng.choice(WEATHER)
    return rng.choice(
        (
            f"Last year {name} traveled to {city}. {_cap(lm.mid())} was beautiful. "
            f"{name} wants to go back to {city} soon.",
            f"{name} and {other} took a trip to {city}. The weather was {weather}. "
            f"They saw {lm.mid()} and ate {rng.choice(FOODS)}.",
            f"It was a {weather} morning in {city}. {name} walked to {lm.mid()}. "
            f"{lm.start()} is in the city of {city}.",
            f"{name} sent a postcard from {city}. It showed {lm.mid()}.",
            f"Once upon a time there was a {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}. "
            f"It lived near the {rng.choice(PLACES)}. Every day it was {rng.choice(MOODS)}.",
        )
    )


GENERAL: tuple[tuple[int, Sentence], ...] = (
    (3, _greeting),
    (3, _people),
    (2, _animals),
    (2, _weather),
    (2, _daily),
    (1, _numbers),
    (2, _narrative),
    (2, _city_fact),
    (2, _capital_fact),
)


def _general(rng: random.Random) -> str:
    sentence = rng.choices([f for _, f in GENERAL], weights=[w for w, _ in GENERAL])[0]
    return sentence(rng)


def build_corpus(seed: int = 0, repeats: int = 40, general: int = 12000) -> list[str]:
    """Short documents, shuffled: `repeats` facts per landmark plus `general` other documents.

    Each landmark gets `repeats` fact documents (one or two sentences, sometimes after a
    general sentence so the fact is not always at the start of a document); each general
    document holds one to three sentences. The same arguments give the same list.
    """
    rng = random.Random(seed)
    docs: list[str] = []
    for lm in LANDMARKS:
        for _ in range(repeats):
            parts = [_landmark_fact(rng, lm)]
            roll = rng.random()
            if roll < 0.25:
                parts.insert(0, _general(rng))
            elif roll < 0.45:
                parts.append(_general(rng))
            docs.append(" ".join(parts))
    for _ in range(general):
        docs.append(" ".join(_general(rng) for _ in range(rng.randint(1, 3))))
    rng.shuffle(docs)
    return docs
