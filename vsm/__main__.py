from vsm.cli import main

main(prog_name="vsm-pool")
