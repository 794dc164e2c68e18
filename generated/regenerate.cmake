# Regenerates the committed output of schemas/ into a scratch directory, then
#   MODE=check : fails with a diff when generated/ differs from it (the up-to-date test);
#   MODE=update: replaces generated/'s generated files with it (`cmake --build <dir> --target regenerate`).
# Variables: MODE PROTOC PROTOC_VERSION PLUGIN SCHEMA_DIR GENERATED_DIR WORK_DIR.
#
# generated/PROTOC_VERSION names the protoc that made the committed files. Checked with another protoc,
# only the generator's own files (.xymqtt.*) are compared: protoc's (.pb.*) differ by version.
foreach(var MODE PROTOC PROTOC_VERSION PLUGIN SCHEMA_DIR GENERATED_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "regenerate.cmake: -D${var}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
file(GLOB_RECURSE protos RELATIVE "${SCHEMA_DIR}" "${SCHEMA_DIR}/*.proto")
list(SORT protos)
execute_process(
  COMMAND "${PROTOC}" "--plugin=protoc-gen-xymqtt=${PLUGIN}" "--cpp_out=${WORK_DIR}"
          "--xymqtt_out=${WORK_DIR}" "--xymqtt_opt=mocks=true" "-I${SCHEMA_DIR}" ${protos}
  WORKING_DIRECTORY "${SCHEMA_DIR}"
  RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "protoc failed (${rv}):\n${out}${err}")
endif()

# The generated files are every file in a subdirectory of generated/ (the top level holds this
# script and CMakeLists.txt).
file(GLOB_RECURSE fresh RELATIVE "${WORK_DIR}" "${WORK_DIR}/*/*")
file(GLOB_RECURSE committed RELATIVE "${GENERATED_DIR}" "${GENERATED_DIR}/*/*")

if(MODE STREQUAL "update")
  foreach(f IN LISTS committed)
    file(REMOVE "${GENERATED_DIR}/${f}")
  endforeach()
  foreach(f IN LISTS fresh)
    get_filename_component(dir "${GENERATED_DIR}/${f}" DIRECTORY)
    file(COPY "${WORK_DIR}/${f}" DESTINATION "${dir}")
  endforeach()
  file(WRITE "${GENERATED_DIR}/PROTOC_VERSION" "${PROTOC_VERSION}\n")
  message(STATUS "generated/ updated from schemas/ (${protos}) by ${PROTOC_VERSION}")
  return()
endif()

file(STRINGS "${GENERATED_DIR}/PROTOC_VERSION" committed_version LIMIT_COUNT 1)
set(exclude -x CMakeLists.txt -x regenerate.cmake -x PROTOC_VERSION)
if(NOT committed_version STREQUAL PROTOC_VERSION)
  message(STATUS "generated/ was made by ${committed_version}, this is ${PROTOC_VERSION}: "
                 "comparing the generator's files only (not protoc's .pb.*)")
  list(FILTER fresh EXCLUDE REGEX "\\.pb\\.")
  list(FILTER committed EXCLUDE REGEX "\\.pb\\.")
  list(APPEND exclude -x "*.pb.*")
endif()

set(problems "")
foreach(f IN LISTS fresh)
  if(NOT EXISTS "${GENERATED_DIR}/${f}")
    string(APPEND problems "missing in generated/: ${f}\n")
  endif()
endforeach()
foreach(f IN LISTS committed)
  if(NOT EXISTS "${WORK_DIR}/${f}")
    string(APPEND problems "stale file in generated/ (not generated any more): ${f}\n")
  endif()
endforeach()
execute_process(COMMAND diff -ru "${GENERATED_DIR}" "${WORK_DIR}" ${exclude}
                RESULT_VARIABLE drv OUTPUT_VARIABLE diff_out ERROR_VARIABLE diff_err)
if(problems OR NOT drv EQUAL 0)
  message(FATAL_ERROR "generated/ is out of date with schemas/ and the generator; refresh it with\n"
                      "  cmake --build <build-dir> --target regenerate\n${problems}${diff_out}${diff_err}")
endif()
message(STATUS "generated/ is up to date (${protos})")
