from moodlens.cli import main

main()
