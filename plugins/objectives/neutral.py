"""Built-in neutral passages for KL regularisation when the recipe names no
``data.neutral_text``: short, plain, topic-diverse prose written for headsurgeon.

Deliberately NOT headsurgeon/data/neutral_text.txt: evaluation measures the tuned model's
drift (KL) on that text, and a regulariser trained on it would flatter the measurement."""

PASSAGES = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors "
    "can borrow up to ten books at a time, and most loans last three weeks.",
    "Tomatoes grow best in full sun with regular watering. Gardeners often tie the stems "
    "to stakes so that the heavy fruit does not bend the plant to the ground.",
    "A train left the station shortly after noon. It travelled through farmland and small "
    "towns before reaching the coast, where passengers could see the sea.",
    "To make a simple bread, mix flour, water, salt and yeast, knead the dough for ten "
    "minutes, let it rise for an hour, and bake it in a hot oven.",
    "The committee met on Tuesday to discuss the budget for next year. Several members "
    "asked for more money for road repairs and for the public swimming pool.",
    "Honeybees communicate the location of flowers with a dance. The angle of the dance "
    "shows the direction, and its length tells the other bees how far to fly.",
    "Regular exercise improves sleep, mood and heart health. Even a short walk every day "
    "can make a noticeable difference over a few months.",
    "The museum's new exhibition shows tools, pottery and jewellery from villages that "
    "existed along the river more than two thousand years ago.",
    "When writing an email to a colleague, state the purpose in the first sentence, keep "
    "paragraphs short, and end with a clear request or next step.",
    "Rain fell steadily through the night. By morning the streets were quiet, the air "
    "smelled fresh, and puddles reflected the grey sky.",
    "A spreadsheet organises data in rows and columns. Formulas can add, average or "
    "compare values, and charts turn the numbers into pictures.",
    "The mountain trail climbs gently for two kilometres, then turns steep and rocky. "
    "Hikers are advised to carry water and to start early in the day.",
    "Many cities are planting trees along their streets. The shade lowers summer "
    "temperatures, and the roots help the soil absorb heavy rain.",
    "The recipe calls for two eggs, a cup of milk and a spoon of sugar. Whisk them "
    "together before adding the flour a little at a time.",
    "Old maps often show sea monsters in unexplored waters. Today satellites measure the "
    "shape of the ocean floor far more precisely than sailors ever could.",
    "The school choir practises twice a week. This year it will sing at the town hall, "
    "at a hospital and at the spring festival in the park.",
)
