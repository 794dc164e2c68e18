# `cmake --install`: the runtime (xymqtt, xymqtt_protobuf, xymqtt_testing, xymqtt_options_proto, headers),
# the generator with its templates, xymqtt/options.proto, the CMake modules and a package config, so that
# an out-of-tree project does
#   find_package(xymqtt CONFIG REQUIRED)
#   xymqtt_generate(TARGET my_proto PROTOS my.proto MOCKS)
# Every file belongs to one install component, which is one Debian package (cmake/XymqttPackage.cmake):
#   runtime    the shared libraries
#   dev        headers, link-time names, static libraries, CMake and pkg-config files
#   generator  protoc-gen-xymqtt (bin/ and its Python package), options.proto
#   cli        the command-line tool (tools/CMakeLists.txt)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The Debian package of each install component.
set(XYMQTT_PACKAGE_runtime "libxymqtt${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
set(XYMQTT_PACKAGE_dev "libxymqtt-dev")
set(XYMQTT_PACKAGE_generator "protoc-gen-xymqtt")
set(XYMQTT_PACKAGE_cli "xymqtt-cli")

set(XYMQTT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/xymqtt")
set(XYMQTT_INSTALL_GENERATORDIR "${CMAKE_INSTALL_DATADIR}/xymqtt/generator")
set(XYMQTT_INSTALL_PROTODIR "${CMAKE_INSTALL_DATADIR}/xymqtt/proto")

set_target_properties(xymqtt_testing PROPERTIES EXPORT_NAME testing)
set_target_properties(xymqtt_protobuf PROPERTIES EXPORT_NAME protobuf)
install(TARGETS xymqtt xymqtt_protobuf xymqtt_testing xymqtt_options_proto
  EXPORT xymqttTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT dev
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT runtime NAMELINK_COMPONENT dev
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT runtime
  PUBLIC_HEADER DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/xymqtt" COMPONENT dev
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/runtime/include/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT dev FILES_MATCHING PATTERN "*.h")
install(EXPORT xymqttTargets NAMESPACE xymqtt:: DESTINATION "${XYMQTT_INSTALL_CMAKEDIR}" COMPONENT dev)

install(PROGRAMS "${PROJECT_SOURCE_DIR}/generator/protoc-gen-xymqtt" DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}"
        COMPONENT generator)
# The plugin on PATH, as protoc looks for it (`protoc --xymqtt_out=...` finds bin/protoc-gen-xymqtt): a
# wrapper that runs the installed generator with the Python found at configure time, wherever the prefix
# is moved to.
file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/bin/protoc-gen-xymqtt"
     CONTENT "#!/bin/sh\nexec \"${XYMQTT_PYTHON_EXECUTABLE}\" -B \"$(dirname \"$(readlink -f \"$0\")\")/../${XYMQTT_INSTALL_GENERATORDIR}/protoc-gen-xymqtt\" \"$@\"\n"
     @ONLY)
install(PROGRAMS "${CMAKE_CURRENT_BINARY_DIR}/bin/protoc-gen-xymqtt" DESTINATION "${CMAKE_INSTALL_BINDIR}"
        COMPONENT generator)
# The whole package directory: its data (schema_rules.json, which model.py reads) goes with the modules.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/generator/xymqtt_gen" "${PROJECT_SOURCE_DIR}/generator/templates"
        DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}" COMPONENT generator
        PATTERN "__pycache__" EXCLUDE PATTERN "*.pyc" EXCLUDE)
install(FILES "${PROJECT_SOURCE_DIR}/VERSION" DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}/xymqtt_gen"
        COMPONENT generator)
install(FILES "${PROJECT_SOURCE_DIR}/schemas/xymqtt/options.proto" DESTINATION "${XYMQTT_INSTALL_PROTODIR}/xymqtt"
        COMPONENT generator)
# Each package carries the licence, as Debian packages do (/usr/share/doc/<package>/copyright).
foreach(component runtime dev generator cli)
  install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/${XYMQTT_PACKAGE_${component}}"
          RENAME copyright COMPONENT ${component})
endforeach()

configure_package_config_file("${CMAKE_CURRENT_LIST_DIR}/xymqttConfig.cmake.in"
  "${CMAKE_CURRENT_BINARY_DIR}/xymqttConfig.cmake"
  INSTALL_DESTINATION "${XYMQTT_INSTALL_CMAKEDIR}"
  PATH_VARS XYMQTT_INSTALL_GENERATORDIR XYMQTT_INSTALL_PROTODIR)
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/xymqttConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES
  "${CMAKE_CURRENT_BINARY_DIR}/xymqttConfig.cmake"
  "${CMAKE_CURRENT_BINARY_DIR}/xymqttConfigVersion.cmake"
  "${CMAKE_CURRENT_LIST_DIR}/XymqttGenerate.cmake"
  DESTINATION "${XYMQTT_INSTALL_CMAKEDIR}" COMPONENT dev)

# pkg-config files, relocatable (paths relative to where they are installed), for builds without CMake:
#   c++ app.cpp $(pkg-config --cflags --libs xymqtt)        (and xymqtt-testing for the loopback)
file(RELATIVE_PATH XYMQTT_PC_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
string(REGEX REPLACE "/$" "" XYMQTT_PC_TO_PREFIX "${XYMQTT_PC_TO_PREFIX}")
foreach(pc xymqtt xymqtt-testing)
  configure_file("${CMAKE_CURRENT_LIST_DIR}/${pc}.pc.in" "${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc" @ONLY)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig" COMPONENT dev)
endforeach()

include(XymqttPackage)
