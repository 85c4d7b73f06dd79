"""The official class lists of the datasets that publish one as a list rather than a file
(FSD50K ships its vocabulary.csv, read by fsd_layouts.py).

FSDKAGGLE2018: the 41 classes of DCASE 2018 task 2 (Fonseca et al., "General-purpose
tagging of Freesound audio with AudioSet labels: task description, dataset, and baseline",
DCASE 2018 workshop). FSDKAGGLE2019: the 80 classes of DCASE 2019 task 2 (Fonseca et al.,
"Audio tagging with noisy labels and minimal supervision", DCASE 2019 workshop), spelt as
the column names of the challenge's submission file. Both in name order.
"""

FSDKAGGLE2018 = (
    'Acoustic_guitar', 'Applause', 'Bark', 'Bass_drum', 'Burping_or_eructation', 'Bus',
    'Cello', 'Chime', 'Clarinet', 'Computer_keyboard', 'Cough', 'Cowbell', 'Double_bass',
    'Drawer_open_or_close', 'Electric_piano', 'Fart', 'Finger_snapping', 'Fireworks', 'Flute',
    'Glockenspiel', 'Gong', 'Gunshot_or_gunfire', 'Harmonica', 'Hi-hat', 'Keys_jangling',
    'Knock', 'Laughter', 'Meow', 'Microwave_oven', 'Oboe', 'Saxophone', 'Scissors', 'Shatter',
    'Snare_drum', 'Squeak', 'Tambourine', 'Tearing', 'Telephone', 'Trumpet',
    'Violin_or_fiddle', 'Writing',
)

FSDKAGGLE2019 = (
    'Accelerating_and_revving_and_vroom', 'Accordion', 'Acoustic_guitar', 'Applause', 'Bark',
    'Bass_drum', 'Bass_guitar', 'Bathtub_(filling_or_washing)', 'Bicycle_bell',
    'Burping_and_eructation', 'Bus', 'Buzz', 'Car_passing_by', 'Cheering',
    'Chewing_and_mastication', 'Child_speech_and_kid_speaking', 'Chink_and_clink',
    'Chirp_and_tweet', 'Church_bell', 'Clapping', 'Computer_keyboard', 'Crackle', 'Cricket',
    'Crowd', 'Cupboard_open_or_close', 'Cutlery_and_silverware', 'Dishes_and_pots_and_pans',
    'Drawer_open_or_close', 'Drip', 'Electric_guitar', 'Fart', 'Female_singing',
    'Female_speech_and_woman_speaking', 'Fill_(with_liquid)', 'Finger_snapping',
    'Frying_(food)', 'Gasp', 'Glockenspiel', 'Gong', 'Gurgling', 'Harmonica', 'Hi-hat', 'Hiss',
    'Keys_jangling', 'Knock', 'Male_singing', 'Male_speech_and_man_speaking',
    'Marimba_and_xylophone', 'Mechanical_fan', 'Meow', 'Microwave_oven', 'Motorcycle',
    'Printer', 'Purr', 'Race_car_and_auto_racing', 'Raindrop', 'Run', 'Scissors', 'Screaming',
    'Shatter', 'Sigh', 'Sink_(filling_or_washing)', 'Skateboard', 'Slam', 'Sneeze', 'Squeak',
    'Stream', 'Strum', 'Tap', 'Tick-tock', 'Toilet_flush', 'Traffic_noise_and_roadway_noise',
    'Trickle_and_dribble', 'Walk_and_footsteps', 'Water_tap_and_faucet', 'Waves_and_surf',
    'Whispering', 'Writing', 'Yell', 'Zipper_(clothing)',
)
