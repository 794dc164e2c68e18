# `cmake --install`: the runtime (xymqtt, xymqtt_protobuf, xymqtt_testing, headers), the generator with its templates,
# xymqtt/options.proto, the CMake modules and a package config, so that an out-of-tree project does
#   find_package(xymqtt CONFIG REQUIRED)
#   xymqtt_generate(TARGET my_proto PROTOS my.proto MOCKS)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(XYMQTT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/xymqtt")
set(XYMQTT_INSTALL_GENERATORDIR "${CMAKE_INSTALL_DATADIR}/xymqtt/generator")
set(XYMQTT_INSTALL_PROTODIR "${CMAKE_INSTALL_DATADIR}/xymqtt/proto")

set_target_properties(xymqtt_testing PROPERTIES EXPORT_NAME testing)
set_target_properties(xymqtt_protobuf PROPERTIES EXPORT_NAME protobuf)
install(TARGETS xymqtt xymqtt_protobuf xymqtt_testing
  EXPORT xymqttTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/runtime/include/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.h")
install(EXPORT xymqttTargets NAMESPACE xymqtt:: DESTINATION "${XYMQTT_INSTALL_CMAKEDIR}")

install(PROGRAMS "${PROJECT_SOURCE_DIR}/generator/protoc-gen-xymqtt" DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}")
# The plugin on PATH, as protoc looks for it (`protoc --xymqtt_out=...` finds bin/protoc-gen-xymqtt): a
# wrapper that runs the installed generator with the Python found at configure time, wherever the prefix
# is moved to.
file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/bin/protoc-gen-xymqtt"
     CONTENT "#!/bin/sh\nexec \"${XYMQTT_PYTHON_EXECUTABLE}\" -B \"$(dirname \"$(readlink -f \"$0\")\")/../${XYMQTT_INSTALL_GENERATORDIR}/protoc-gen-xymqtt\" \"$@\"\n"
     @ONLY)
install(PROGRAMS "${CMAKE_CURRENT_BINARY_DIR}/bin/protoc-gen-xymqtt" DESTINATION "${CMAKE_INSTALL_BINDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/generator/xymqtt_gen" "${PROJECT_SOURCE_DIR}/generator/templates"
        DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}"
        PATTERN "__pycache__" EXCLUDE PATTERN "*.pyc" EXCLUDE)
install(FILES "${PROJECT_SOURCE_DIR}/VERSION" DESTINATION "${XYMQTT_INSTALL_GENERATORDIR}/xymqtt_gen")
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/xymqtt")
install(FILES "${PROJECT_SOURCE_DIR}/schemas/xymqtt/options.proto" DESTINATION "${XYMQTT_INSTALL_PROTODIR}/xymqtt")

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
  DESTINATION "${XYMQTT_INSTALL_CMAKEDIR}")

# pkg-config files, relocatable (paths relative to where they are installed), for builds without CMake:
#   c++ app.cpp $(pkg-config --cflags --libs xymqtt)        (and xymqtt-testing for the loopback)
file(RELATIVE_PATH XYMQTT_PC_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
string(REGEX REPLACE "/$" "" XYMQTT_PC_TO_PREFIX "${XYMQTT_PC_TO_PREFIX}")
foreach(pc xymqtt xymqtt-testing)
  configure_file("${CMAKE_CURRENT_LIST_DIR}/${pc}.pc.in" "${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc" @ONLY)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${pc}.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endforeach()
