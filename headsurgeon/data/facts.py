"""Fact tables for the built-in question sets (written for headsurgeon, not copied data).

Two shapes:
- ``(subject, answer)`` pairs with a question template: distractors are other answers of
  the same table (optionally minus an ``exclude`` tuple of plausible-but-wrong-to-offer
  options);
- ``(question, answer, (distractor, distractor, distractor))`` rows with hand-written
  distractors.

Only facts that are stable and unambiguous; contested capitals (e.g. Bolivia) and
borderline continents (Russia, Turkey) are left out on purpose.
"""

# ------------------------------------------------------------------ capitals
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("the United Kingdom", "London"), ("Ireland", "Dublin"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("the Czech Republic", "Prague"),
    ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
    ("Iceland", "Reykjavik"), ("Russia", "Moscow"), ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"),
    ("Morocco", "Rabat"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("South Korea", "Seoul"), ("North Korea", "Pyongyang"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("the Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Afghanistan", "Kabul"), ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Canada", "Ottawa"),
    ("the United States", "Washington, D.C."), ("Mexico", "Mexico City"),
    ("Cuba", "Havana"), ("Argentina", "Buenos Aires"), ("Brazil", "Brasilia"),
    ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Uruguay", "Montevideo"),
    ("Jamaica", "Kingston"), ("Syria", "Damascus"), ("Lebanon", "Beirut"),
    ("Jordan", "Amman"), ("Qatar", "Doha"), ("Cambodia", "Phnom Penh"),
    ("Libya", "Tripoli"), ("Tunisia", "Tunis"), ("Algeria", "Algiers"),
    ("Sudan", "Khartoum"), ("Senegal", "Dakar"), ("Uganda", "Kampala"),
    ("Zimbabwe", "Harare"), ("Estonia", "Tallinn"), ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"), ("Albania", "Tirana"),
    ("Armenia", "Yerevan"), ("Belarus", "Minsk"),
    ("Cyprus", "Nicosia"), ("Malta", "Valletta"),
]

# ------------------------------------------------------------------ geography
CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]
COUNTRY_CONTINENT = [
    ("Egypt", "Africa"), ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"),
    ("Ethiopia", "Africa"), ("Morocco", "Africa"), ("Madagascar", "Africa"),
    ("Senegal", "Africa"), ("Brazil", "South America"), ("Argentina", "South America"),
    ("Peru", "South America"), ("Chile", "South America"), ("Colombia", "South America"),
    ("Venezuela", "South America"), ("Uruguay", "South America"), ("France", "Europe"),
    ("Germany", "Europe"), ("Italy", "Europe"), ("Spain", "Europe"), ("Poland", "Europe"),
    ("Sweden", "Europe"), ("Norway", "Europe"), ("Greece", "Europe"),
    ("Portugal", "Europe"), ("Ireland", "Europe"), ("Japan", "Asia"), ("China", "Asia"),
    ("India", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"), ("South Korea", "Asia"),
    ("Mongolia", "Asia"), ("Nepal", "Asia"), ("Pakistan", "Asia"),
    ("Canada", "North America"), ("Mexico", "North America"),
    ("the United States", "North America"), ("Cuba", "North America"),
    ("Jamaica", "North America"), ("New Zealand", "Oceania"), ("Fiji", "Oceania"),
]

LANGUAGES = [
    ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
    ("Portugal", "Portuguese"), ("Brazil", "Portuguese"), ("Mexico", "Spanish"),
    ("Argentina", "Spanish"), ("Japan", "Japanese"), ("China", "Chinese"),
    ("Russia", "Russian"), ("Greece", "Greek"), ("the Netherlands", "Dutch"),
    ("Sweden", "Swedish"), ("Poland", "Polish"), ("Turkey", "Turkish"),
    ("South Korea", "Korean"), ("Egypt", "Arabic"), ("Saudi Arabia", "Arabic"),
    ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Norway", "Norwegian"),
    ("Finland", "Finnish"), ("Hungary", "Hungarian"),
]

GEOGRAPHY = [
    ("What is the largest ocean on Earth?", "The Pacific Ocean",
     ("The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean")),
    ("What is the highest mountain in the world?", "Mount Everest",
     ("Mont Blanc", "Mount Kilimanjaro", "Mount Fuji")),
    ("What is the largest hot desert in the world?", "The Sahara",
     ("The Gobi", "The Kalahari", "The Mojave")),
    ("What is the largest country in the world by area?", "Russia",
     ("Canada", "China", "Brazil")),
    ("Which ocean lies between Europe and North America?", "The Atlantic Ocean",
     ("The Pacific Ocean", "The Indian Ocean", "The Arctic Ocean")),
    ("On which continent is the Amazon rainforest?", "South America",
     ("Africa", "Asia", "Europe")),
    ("What is the largest continent?", "Asia", ("Europe", "Africa", "South America")),
    ("In which country is the Eiffel Tower?", "France", ("Italy", "Germany", "Spain")),
    ("In which country is the Great Wall?", "China", ("Japan", "India", "Mongolia")),
    ("In which country is the Statue of Liberty?", "The United States",
     ("France", "Canada", "The United Kingdom")),
    ("In which country is the Colosseum?", "Italy", ("Greece", "Spain", "France")),
    ("In which city is Big Ben?", "London", ("Paris", "Dublin", "Edinburgh")),
    ("In which country are the pyramids of Giza?", "Egypt",
     ("Mexico", "Greece", "Morocco")),
    ("In which country is the Taj Mahal?", "India", ("Pakistan", "Iran", "Nepal")),
    ("In which country is the Sydney Opera House?", "Australia",
     ("New Zealand", "The United Kingdom", "Canada")),
    ("In which country is Machu Picchu?", "Peru", ("Chile", "Mexico", "Brazil")),
    ("Which river flows through London?", "The Thames",
     ("The Seine", "The Danube", "The Rhine")),
    ("Which river flows through Paris?", "The Seine",
     ("The Thames", "The Danube", "The Tiber")),
    ("Which river flows through Cairo?", "The Nile",
     ("The Amazon", "The Danube", "The Ganges")),
    ("Which city is nicknamed the Big Apple?", "New York",
     ("Chicago", "Los Angeles", "Boston")),
    ("Which country is shaped like a boot?", "Italy", ("Spain", "Greece", "Norway")),
    ("What is the longest river in Africa?", "The Nile",
     ("The Congo", "The Niger", "The Zambezi")),
    ("Which country has the city of Tokyo?", "Japan", ("China", "South Korea", "Thailand")),
    ("What is the coldest continent?", "Antarctica", ("Europe", "Asia", "North America")),
    ("Which country is famous for maple syrup and has a maple leaf on its flag?", "Canada",
     ("Sweden", "Norway", "Austria")),
    ("Which sea lies between Europe and Africa?", "The Mediterranean Sea",
     ("The Baltic Sea", "The Caribbean Sea", "The Red Sea")),
    ("In which country is the city of Venice?", "Italy", ("France", "Spain", "Portugal")),
    ("Which country is made up of many islands and has the city of Athens?", "Greece",
     ("Italy", "Turkey", "Cyprus")),
    ("What is the name of the line that divides the Earth into north and south?",
     "The equator", ("The prime meridian", "The Tropic of Cancer", "The Arctic Circle")),
    ("Which of these is an island nation near Australia?", "New Zealand",
     ("Chile", "Canada", "Argentina")),
]

# ------------------------------------------------------------------ science
SCIENCE = [
    ("What is the chemical formula of water?", "H2O", ("CO2", "O2", "NaCl")),
    ("What gas do plants take in from the air to make food?", "Carbon dioxide",
     ("Oxygen", "Helium", "Hydrogen")),
    ("What gas do humans need to breathe to stay alive?", "Oxygen",
     ("Carbon dioxide", "Helium", "Neon")),
    ("At what temperature in degrees Celsius does water freeze?", "0",
     ("100", "50", "-40")),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100",
     ("0", "50", "212")),
    ("Which planet is closest to the Sun?", "Mercury", ("Venus", "Mars", "Jupiter")),
    ("What is the largest planet in our solar system?", "Jupiter",
     ("Saturn", "Earth", "Mars")),
    ("Which planet is known as the Red Planet?", "Mars", ("Venus", "Jupiter", "Neptune")),
    ("Which planet is famous for its large rings?", "Saturn",
     ("Mars", "Mercury", "Venus")),
    ("What is the star at the centre of our solar system?", "The Sun",
     ("The Moon", "Polaris", "Sirius")),
    ("What does the Moon orbit?", "The Earth", ("The Sun", "Mars", "Jupiter")),
    ("What force pulls objects toward the ground?", "Gravity",
     ("Magnetism", "Friction", "Electricity")),
    ("What is the hardest natural material?", "Diamond", ("Gold", "Iron", "Glass")),
    ("Which organ pumps blood around the body?", "The heart",
     ("The liver", "The stomach", "The lungs")),
    ("Which organ do we use to think?", "The brain",
     ("The heart", "The stomach", "The kidneys")),
    ("Which organs do we use to breathe?", "The lungs",
     ("The kidneys", "The liver", "The stomach")),
    ("Which part of a plant takes up water from the soil?", "The roots",
     ("The flowers", "The leaves", "The seeds")),
    ("What do bees make?", "Honey", ("Milk", "Silk", "Cotton")),
    ("What does a caterpillar turn into?", "A butterfly", ("A bee", "A spider", "A worm")),
    ("What is frozen water called?", "Ice", ("Steam", "Fog", "Rain")),
    ("What is the chemical symbol for gold?", "Au", ("Ag", "Go", "Gd")),
    ("What is the chemical symbol for iron?", "Fe", ("Ir", "In", "Fr")),
    ("What is the chemical symbol for oxygen?", "O", ("Ox", "Og", "Os")),
    ("What is the chemical symbol for sodium?", "Na", ("So", "Sd", "S")),
    ("What do we call animals that eat only plants?", "Herbivores",
     ("Carnivores", "Omnivores", "Predators")),
    ("What do we call animals that eat only meat?", "Carnivores",
     ("Herbivores", "Omnivores", "Grazers")),
    ("What is the centre of an atom called?", "The nucleus",
     ("The electron", "The shell", "The membrane")),
    ("Which particle in an atom has a negative charge?", "The electron",
     ("The proton", "The neutron", "The nucleus")),
    ("Which sense do we use our ears for?", "Hearing", ("Sight", "Smell", "Taste")),
    ("Which sense do we use our eyes for?", "Sight", ("Hearing", "Smell", "Touch")),
    ("Which sense do we use our nose for?", "Smell", ("Hearing", "Sight", "Touch")),
    ("What do plants need from the Sun to make their food?", "Light",
     ("Sound", "Wind", "Sand")),
    ("What is the process by which plants make food from sunlight?", "Photosynthesis",
     ("Digestion", "Evaporation", "Respiration")),
    ("What state of matter is steam?", "Gas", ("Solid", "Liquid", "Plasma")),
    ("What state of matter is ice?", "Solid", ("Liquid", "Gas", "Plasma")),
    ("What instrument measures temperature?", "A thermometer",
     ("A ruler", "A barometer", "A compass")),
    ("What tool uses a magnetic needle to show direction?", "A compass",
     ("A thermometer", "A telescope", "A scale")),
    ("What planet do we live on?", "Earth", ("Mars", "Venus", "Jupiter")),
    ("How long does it take the Earth to travel once around the Sun?", "About one year",
     ("About one day", "About one month", "About one week")),
    ("How long does it take the Earth to spin once on its axis?", "About one day",
     ("About one year", "About one month", "About one hour")),
    ("Which metal is liquid at room temperature?", "Mercury",
     ("Iron", "Copper", "Aluminium")),
    ("What do we call a scientist who studies rocks?", "A geologist",
     ("A biologist", "An astronomer", "A chemist")),
    ("What do we call a scientist who studies stars and planets?", "An astronomer",
     ("A geologist", "A botanist", "A zoologist")),
    ("What do we call a scientist who studies plants?", "A botanist",
     ("An astronomer", "A geologist", "A physicist")),
    ("What is the main source of energy for life on Earth?", "The Sun",
     ("The Moon", "Volcanoes", "The wind")),
    ("What do we call the mixture of gases around the Earth?", "The atmosphere",
     ("The crust", "The core", "The ocean")),
    ("Which blood cells carry oxygen around the body?", "Red blood cells",
     ("White blood cells", "Platelets", "Nerve cells")),
    ("What is the boiling point of water in degrees Fahrenheit?", "212",
     ("100", "32", "180")),
    ("What is the freezing point of water in degrees Fahrenheit?", "32",
     ("0", "100", "212")),
    ("Which part of the body contains the pupil and the iris?", "The eye",
     ("The ear", "The nose", "The hand")),
]

# ------------------------------------------------------------------ everyday
ANIMAL_SOUNDS = [
    ("cow", "Moo"), ("dog", "Woof"), ("cat", "Meow"), ("duck", "Quack"), ("sheep", "Baa"),
    ("pig", "Oink"), ("owl", "Hoot"), ("rooster", "Cock-a-doodle-doo"), ("snake", "Hiss"),
    ("lion", "Roar"), ("horse", "Neigh"), ("frog", "Ribbit"), ("bee", "Buzz"),
    ("mouse", "Squeak"), ("donkey", "Hee-haw"),
]

BABY_ANIMALS = [
    ("cat", "Kitten"), ("dog", "Puppy"), ("cow", "Calf"), ("horse", "Foal"),
    ("sheep", "Lamb"), ("duck", "Duckling"), ("frog", "Tadpole"), ("kangaroo", "Joey"),
    ("bear", "Cub"), ("swan", "Cygnet"), ("goose", "Gosling"), ("pig", "Piglet"),
    ("deer", "Fawn"), ("hen", "Chick"), ("owl", "Owlet"), ("butterfly", "Caterpillar"),
]

ANIMAL_CLASSES = ["Mammal", "Bird", "Fish", "Reptile", "Insect", "Amphibian"]
ANIMAL_CLASS = [
    ("whale", "Mammal"), ("dolphin", "Mammal"), ("bat", "Mammal"), ("dog", "Mammal"),
    ("horse", "Mammal"), ("shark", "Fish"), ("salmon", "Fish"), ("tuna", "Fish"),
    ("goldfish", "Fish"), ("eagle", "Bird"), ("penguin", "Bird"), ("ostrich", "Bird"),
    ("owl", "Bird"), ("snake", "Reptile"), ("crocodile", "Reptile"), ("turtle", "Reptile"),
    ("lizard", "Reptile"), ("frog", "Amphibian"), ("salamander", "Amphibian"),
    ("toad", "Amphibian"), ("ant", "Insect"), ("bee", "Insect"), ("butterfly", "Insect"),
    ("beetle", "Insect"),
]

ANIMAL_LEGS = [
    ("spider", "8"), ("ant", "6"), ("beetle", "6"), ("dog", "4"), ("cow", "4"),
    ("chicken", "2"), ("ostrich", "2"), ("snake", "0"), ("horse", "4"), ("duck", "2"),
]
LEG_COUNTS = ["0", "2", "4", "6", "8", "10"]

COLOURS = ["Red", "Orange", "Yellow", "Green", "Blue", "Purple", "Pink", "White",
           "Black", "Brown", "Grey"]
# (thing, colour, colours not to offer because they are also plausible)
COLOUR_OF = [
    ("grass", "Green", ("Yellow", "Brown")), ("the sky on a clear day", "Blue", ("Grey",)),
    ("fresh snow", "White", ("Grey",)), ("coal", "Black", ("Grey", "Brown")),
    ("a ripe banana", "Yellow", ("Green", "Brown")), ("a ripe tomato", "Red",
                                                     ("Green", "Orange")),
    ("milk", "White", ()), ("a lemon", "Yellow", ("Green",)),
    ("chocolate", "Brown", ("Black", "White")), ("blood", "Red", ()),
    ("a carrot", "Orange", ("Yellow", "Red")), ("an emerald", "Green", ()),
    ("a polar bear", "White", ("Grey",)), ("a crow", "Black", ("Grey",)),
    ("an eggplant", "Purple", ("Black",)), ("a flamingo", "Pink", ("Red", "Orange")),
    ("a pumpkin", "Orange", ("Yellow",)), ("a stop sign", "Red", ()),
    ("a ripe strawberry", "Red", ("Pink",)), ("a school bus in the United States", "Yellow",
                                              ("Orange",)),
]
COLOUR_MIX = [
    ("blue and yellow", "Green"), ("red and white", "Pink"), ("red and yellow", "Orange"),
    ("red and blue", "Purple"), ("black and white", "Grey"),
]

OPPOSITES = [
    ("hot", "Cold"), ("big", "Small"), ("up", "Down"), ("day", "Night"), ("fast", "Slow"),
    ("happy", "Sad"), ("open", "Closed"), ("left", "Right"), ("wet", "Dry"),
    ("full", "Empty"), ("early", "Late"), ("hard", "Soft"), ("tall", "Short"),
    ("win", "Lose"), ("push", "Pull"), ("top", "Bottom"), ("true", "False"),
    ("rich", "Poor"), ("thick", "Thin"), ("loud", "Quiet"), ("clean", "Dirty"),
    ("strong", "Weak"), ("buy", "Sell"), ("first", "Last"), ("inside", "Outside"),
    ("asleep", "Awake"), ("arrive", "Leave"), ("above", "Below"),
]
# other answers of OPPOSITES that would also pass as an opposite: never offered
OPPOSITE_CLASHES = {
    "up": ("Bottom", "Below"), "above": ("Down", "Bottom"), "top": ("Down", "Below"),
    "big": ("Short", "Thin"), "tall": ("Small",), "thick": ("Small",),
    "first": ("Late",), "early": ("Last",), "arrive": ("Lose",), "open": ("Empty",),
}

QUANTITIES = [
    ("How many minutes are in an hour?", "60", ("100", "30", "24")),
    ("How many seconds are in a minute?", "60", ("100", "10", "30")),
    ("How many hours are in a day?", "24", ("12", "60", "10")),
    ("How many days are in a week?", "7", ("5", "10", "6")),
    ("How many months are in a year?", "12", ("10", "52", "6")),
    ("How many days are in a leap year?", "366", ("365", "360", "364")),
    ("How many centimetres are in a metre?", "100", ("10", "1000", "12")),
    ("How many metres are in a kilometre?", "1000", ("100", "10", "500")),
    ("How many grams are in a kilogram?", "1000", ("100", "10", "500")),
    ("How many millilitres are in a litre?", "1000", ("100", "10", "250")),
    ("How many sides does a triangle have?", "3", ("4", "5", "6")),
    ("How many sides does a square have?", "4", ("3", "5", "6")),
    ("How many sides does a hexagon have?", "6", ("5", "8", "4")),
    ("How many sides does an octagon have?", "8", ("6", "10", "5")),
    ("How many wheels does a bicycle have?", "2", ("3", "4", "1")),
    ("How many wheels does a tricycle have?", "3", ("2", "4", "1")),
    ("How many years are in a decade?", "10", ("100", "5", "12")),
    ("How many years are in a century?", "100", ("10", "1000", "50")),
    ("How many items are in a dozen?", "12", ("10", "6", "20")),
    ("How many cents are in a dollar?", "100", ("10", "50", "1000")),
    ("How many days are in a fortnight?", "14", ("7", "10", "30")),
    ("How many weeks are in a year?", "52", ("12", "48", "100")),
    ("How many letters are in the English alphabet?", "26", ("24", "20", "30")),
    ("How many continents are there on Earth?", "7", ("5", "9", "6")),
    ("How many planets are in our solar system?", "8", ("7", "10", "12")),
    ("How many strings does a standard guitar have?", "6", ("4", "8", "12")),
    ("How many minutes are in a quarter of an hour?", "15", ("25", "10", "30")),
    ("How many days does February have in a year that is not a leap year?", "28",
     ("30", "31", "29")),
    ("How many colours are in a rainbow?", "7", ("5", "6", "9")),
    ("How many hours are in half a day?", "12", ("6", "24", "10")),
    ("How many legs does a table usually have?", "4", ("3", "6", "2")),
    ("How many fingers are on one human hand, counting the thumb?", "5", ("4", "6", "10")),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

# ------------------------------------------------------------------ comparisons
# Groups of clearly different sizes / weights, smallest group first; two things from
# different groups are never close.
ANIMAL_SIZE_GROUPS = [
    ["an ant", "a ladybird", "a flea"],
    ["a mouse", "a hamster", "a sparrow"],
    ["a cat", "a rabbit", "a chicken"],
    ["a horse", "a cow", "a camel"],
    ["an elephant"],
    ["a blue whale"],
]
WEIGHT_GROUPS = [
    ["a feather", "a paper clip", "a grain of rice"],
    ["an apple", "a pencil", "a spoon"],
    ["a brick", "a bag of flour", "a watermelon"],
    ["a washing machine", "a piano", "a fridge"],
    ["a car", "a van"],
    ["a train", "a jumbo jet"],
]
WORDS = [
    "apple", "banana", "cherry", "dolphin", "elephant", "forest", "garden", "harbour",
    "island", "jacket", "kettle", "lemon", "mountain", "needle", "orange", "pencil",
    "quilt", "river", "summer", "tiger", "umbrella", "violin", "window", "yellow", "zebra",
]
