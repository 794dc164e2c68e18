# The build of generated/ against a protobuf other than the one that made the committed files: configures
# this source tree with XYMQTT_COMMITTED_PROTOC_VERSION naming another protoc, then checks that
#   - configure chooses to generate the example schemas at build time,
#   - building their sources produces the same generator output as the committed files,
#   - the up-to-date check, run as with another protoc, compares only the generator's own files.
# Variables: SOURCE_DIR WORK_DIR.
foreach(var SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "at_build_check.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")

execute_process(
  COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}" "-DXYMQTT_COMMITTED_PROTOC_VERSION=libprotoc 0.0.0"
          -DXYMQTT_BUILD_TESTS=OFF -DXYMQTT_BUILD_EXAMPLES=OFF -DXYMQTT_BUILD_BENCH=OFF -DXYMQTT_BUILD_TOOLS=OFF
  RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "configure failed:\n${out}${err}")
endif()
if(NOT out MATCHES "generated/ was made by libprotoc 0\\.0\\.0, this build has libprotoc [0-9.]+: generating the example schemas at build time")
  message(FATAL_ERROR "configure did not choose to generate at build time:\n${out}")
endif()

execute_process(COMMAND "${CMAKE_COMMAND}" --build "${WORK_DIR}" --target xymqtt_examples_sources
                RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "generating at build time failed:\n${out}${err}")
endif()
file(GLOB committed RELATIVE "${SOURCE_DIR}/generated" "${SOURCE_DIR}/generated/examples/*")
set(compared 0)
foreach(f IN LISTS committed)
  set(fresh "${WORK_DIR}/generated/from_schemas/${f}")
  if(NOT EXISTS "${fresh}")
    message(FATAL_ERROR "not generated at build time: ${f}")
  endif()
  if(f MATCHES "\\.xymqtt")
    file(READ "${SOURCE_DIR}/generated/${f}" a)
    file(READ "${fresh}" b)
    if(NOT a STREQUAL b)
      message(FATAL_ERROR "${f} generated at build time differs from the committed one")
    endif()
    math(EXPR compared "${compared} + 1")
  endif()
endforeach()
if(compared LESS 12)
  message(FATAL_ERROR "only ${compared} generator files compared")
endif()

# The up-to-date check with another protoc: a committed .pb.cc that differs is not an error, a
# generator file that differs is.
set(copy "${WORK_DIR}/generated_copy")
file(COPY "${SOURCE_DIR}/generated/" DESTINATION "${copy}")
file(APPEND "${copy}/examples/publisher.pb.cc" "// made by another protoc\n")
file(STRINGS "${WORK_DIR}/CMakeCache.txt" protoc_line REGEX "^Protobuf_PROTOC_EXECUTABLE:")
string(REGEX REPLACE "^[^=]*=" "" protoc "${protoc_line}")
set(args -DPROTOC=${protoc} -DPLUGIN=${WORK_DIR}/xymqtt_generator/protoc-gen-xymqtt
         -DSCHEMA_DIR=${SOURCE_DIR}/schemas "-DPROTOC_VERSION=libprotoc 0.0.0" -DGENERATED_DIR=${copy})
execute_process(COMMAND "${CMAKE_COMMAND}" -DMODE=check ${args} -DWORK_DIR=${WORK_DIR}/check1
                        -P "${SOURCE_DIR}/generated/regenerate.cmake"
                RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "the check with another protoc compared protoc's files:\n${out}${err}")
endif()
file(APPEND "${copy}/examples/publisher.xymqtt.h" "// edited by hand\n")
execute_process(COMMAND "${CMAKE_COMMAND}" -DMODE=check ${args} -DWORK_DIR=${WORK_DIR}/check2
                        -P "${SOURCE_DIR}/generated/regenerate.cmake"
                RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rv EQUAL 0 OR NOT err MATCHES "publisher\\.xymqtt\\.h")
  message(FATAL_ERROR "the check with another protoc missed a stale generator file:\n${out}${err}")
endif()
message(STATUS "generated at build time: ${compared} generator files as committed; the check skips only protoc's files")
