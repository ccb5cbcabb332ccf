"""The Wallaroo Python API: describe a stream-processing application.

``wallaroo run app.py`` loads the application, calls its
``application_setup(args)`` and runs what it returns: either
``ApplicationBuilder(...).build()`` (the 0.4/0.5 API) or
``wallaroo.build_application(name, pipeline)`` (the 0.6 API).  This package only re-exports; see the private modules for code.
"""

from ._builder import ApplicationBuilder as ApplicationBuilder
from ._configs import GenSourceConfig as GenSourceConfig
from ._configs import KafkaSinkConfig as KafkaSinkConfig
from ._configs import KafkaSourceConfig as KafkaSourceConfig
from ._configs import TCPSinkConfig as TCPSinkConfig
from ._configs import TCPSourceConfig as TCPSourceConfig
from ._configs import tcp_parse_input_addrs as tcp_parse_input_addrs
from ._configs import tcp_parse_output_addrs as tcp_parse_output_addrs
from ._decorators import computation as computation
from ._decorators import computation_multi as computation_multi
from ._decorators import decoder as decoder
from ._decorators import encoder as encoder
from ._decorators import key_extractor as key_extractor
from ._decorators import partition as partition
from ._decorators import state_computation as state_computation
from ._decorators import state_computation_multi as state_computation_multi
from ._errors import WallarooParameterError as WallarooParameterError
from ._pipelines import build_application as build_application
from ._pipelines import source as source
from ._windows import Aggregation as Aggregation
from ._windows import count_windows as count_windows
from ._windows import hours as hours
from ._windows import microseconds as microseconds
from ._windows import milliseconds as milliseconds
from ._windows import minutes as minutes
from ._windows import nanoseconds as nanoseconds
from ._windows import range_windows as range_windows
from ._windows import seconds as seconds
from ._kafka_cli import CustomKafkaSinkCLIParser as CustomKafkaSinkCLIParser
from ._kafka_cli import CustomKafkaSourceCLIParser as CustomKafkaSourceCLIParser
from ._kafka_cli import DefaultKafkaSinkCLIParser as DefaultKafkaSinkCLIParser
from ._kafka_cli import DefaultKafkaSourceCLIParser as DefaultKafkaSourceCLIParser
from ._kafka_cli import kafka_parse_sink_options as kafka_parse_sink_options
from ._kafka_cli import kafka_parse_source_options as kafka_parse_source_options

__version__ = "0.1.0"
