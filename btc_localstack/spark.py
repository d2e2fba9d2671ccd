"""Spark for the local stack: pyspark in local mode plus the Kafka connector from Maven Central.

Spark needs no daemon here: each job starts its own local-mode driver. What the stack provides is
the `spark-sql-kafka-0-10` connector matching the installed pyspark, resolved once into the cache
(so sessions start offline and fast) and handed to Spark as ``spark.jars``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import REPO_ROOT, Service, maven_resolve

POM_TEMPLATE = REPO_ROOT / "infra" / "local" / "maven" / "spark-kafka" / "pom.xml"


def pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def _pyspark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def _artifact(jar: Path) -> str:
    """``hadoop-client-api-3.5.0.jar`` -> ``hadoop-client-api``."""
    return re.sub(r"-\d[\w.]*$", "", jar.stem)


class SparkService(Service):
    name = "spark"

    def __init__(self, paths):
        super().__init__(paths)
        self.version = pyspark_version()
        self.lib = self.cache / self.version / "lib"

    def provision(self) -> None:
        pom = self.cache / self.version / "pom.xml"
        pom.parent.mkdir(parents=True, exist_ok=True)
        text = POM_TEMPLATE.read_text().replace("@SPARK_VERSION@", self.version)
        if not pom.exists() or pom.read_text() != text:
            pom.write_text(text)
        maven_resolve(pom, self.lib, component=self.name)

    def jars(self) -> list[Path]:
        """The connector jars pyspark lacks. Maven also resolves Spark's own transitive jars (Scala,
        the Hadoop client, compression codecs) in versions that may differ from pyspark's bundled
        ones; two versions of one library on the classpath break at run time, so those are left out."""
        bundled = {_artifact(jar) for jar in (Path(_pyspark_home()) / "jars").glob("*.jar")}
        return sorted(jar for jar in self.lib.glob("*.jar") if _artifact(jar) not in bundled)

    def start(self) -> None:
        """Nothing to start: local mode runs inside each job's driver."""

    def stop(self, *, kill: bool = False) -> None:
        """Nothing to stop."""

    def is_running(self) -> bool:
        return bool(self.jars())

    def status(self) -> dict[str, object]:
        return {"running": "on demand (local mode)", "master": self.master(), "pyspark": self.version,
                "kafka connector jars": len(self.jars())}

    @staticmethod
    def master() -> str:
        return os.environ.get("BTC_STACK_SPARK_MASTER", "local[2]")

    def env(self) -> dict[str, str]:
        return {"BTC_SPARK_MASTER": self.master(),
                "BTC_SPARK_JARS": ",".join(str(jar) for jar in self.jars()),
                "BTC_SPARK_PACKAGES": ""}
